"""Shared benchmark plumbing: timing a compiled function, run metadata, JSON rows."""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import sys
import time

import jax

from genrank_jax.cli import machine
from genrank_jax.cli.command_line import user_command

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def measure(fn, args, repeats):
    """(compile seconds, median ms, temp bytes) of jitted `fn` on `args` (compile timed apart)."""
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append((time.perf_counter() - start) * 1e3)
    analysis = compiled.memory_analysis()
    temp = getattr(analysis, "temp_size_in_bytes", None) if analysis is not None else None
    return compile_s, statistics.median(times), temp


def run_header() -> dict:
    """Device kind, platform, jax version, git commit and command line of this run."""
    script = pathlib.Path(sys.argv[0])
    script = f"bench/{script.name}" if script.parent.name == "bench" else str(script)
    # as typed, without the absolute paths of this machine (genrank_jax.cli.command_line.user_command)
    return dict(machine(), command=user_command(["python", script, *sys.argv[1:]]))


def write_rows(name: str, header: dict, rows: list[dict], out: str | None) -> pathlib.Path | None:
    """Write {header, rows} as JSON to `out` ("auto": bench/results/<name>_<platform>_<commit>_<unix time>.json)."""
    if not out:
        return None
    path = (RESULTS / f"{name}_{header['platform']}_{header['git_commit']}_{int(time.time())}.json"
            if out == "auto" else pathlib.Path(out))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole and renamed into place: a run killed mid-write leaves the previous rows intact.
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"header": header, "rows": rows}, indent=2))
    os.replace(partial, path)
    return path
