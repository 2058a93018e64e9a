"""Walks `genrank-jax` command lines in one process, in order (used by test_readme_commands.py).

    python tests/readme_driver.py plan.json results.json

plan.json: {"commands": [{"argv": [...], "cluster": bool, "producer": bool}], "real_under_s": float|null,
"roots": [folders the dry runs must leave untouched]}. For each command:
1. `argv + ["--dry-run"]`; the files under `roots` are listed before and after (a dry run writes
   nothing).
2. With `real_under_s`, a command whose dry run expects under that many seconds runs for real,
   as written.
3. A `producer` (a later command reads what it writes) runs for real, shortened:
   `simulate` with the test preset, `train` interrupted (Ctrl-C, as a user would) right after its
   first checkpoint, saved at step 1, so a later `--resume` or `export` finds a checkpoint of
   exactly that command without training it to the end.
4. Any other command leaves what its dry run says it "would write" as empty files, so the next
   command finds the folders the ones before it would have filled: two commands that write to one
   folder (as every `train` example did, to the one default `--out`) are caught.
One process for every command: jax starts once, with the device count the caller's XLA_FLAGS give
(a `--mesh` example finds its devices). `cluster`: the command is meant for a machine inside a
cluster (a TPU slice): the cluster detection answers yes, as it would there.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import re
import sys

EXPECTED = re.compile(r"^expected time: (?:about (\d+) s\b|(under a minute))", re.M)
WOULD_WRITE = re.compile(r"^would write: (.*)$", re.M)


def run(argv: list[str], *, cluster: bool = False, stop_after_first_checkpoint: bool = False) -> dict:
    from genrank_jax.cli import commands as cli  # _cluster_around is replaced in the module that calls it
    from genrank_jax.training.checkpoint import Checkpoints

    saving, clustered = Checkpoints.save, cli._cluster_around

    def save_then_stop(self, *args, **kwargs):
        saving(self, *args, **kwargs)
        raise KeyboardInterrupt

    out, err = io.StringIO(), io.StringIO()
    try:
        if stop_after_first_checkpoint:
            Checkpoints.save = save_then_stop
        if cluster:
            cli._cluster_around = lambda: True
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as stop:  # argparse's own exits
                code = stop.code
    finally:
        Checkpoints.save, cli._cluster_around = saving, clustered
    return {"argv": argv, "code": code, "out": out.getvalue(), "err": err.getvalue()}


def listing(roots: list[str]) -> dict[str, list]:
    files = {}
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                path = pathlib.Path(folder, name)
                stat = path.stat()
                files[str(path)] = [stat.st_size, stat.st_mtime_ns]
            files.setdefault(folder, [])
    return files


def expected_seconds(dry_run_output: str) -> float | None:
    match = EXPECTED.search(dry_run_output)
    if match is None:
        return None
    return float(match.group(1)) if match.group(1) else 59.0


def walk(plan: dict, results_file: str) -> None:
    results = []

    def record(kind: str, result: dict) -> dict:
        results.append({"kind": kind, **result})
        with open(results_file, "w") as handle:  # after every step: a crash still says how far it got
            json.dump(results, handle)
        return result

    for command in plan["commands"]:
        argv = command["argv"]
        before = listing(plan["roots"])
        dry = run(argv + ["--dry-run"], cluster=command.get("cluster", False))
        after = listing(plan["roots"])
        dry["written"] = sorted(set(after) ^ set(before) | {p for p in after if p in before and after[p] != before[p]})
        record("dry-run", dry)
        if dry["code"] != 0:
            return  # what follows may depend on it
        seconds = expected_seconds(dry["out"])
        if plan.get("real_under_s") is not None and seconds is not None and seconds < plan["real_under_s"]:
            record("real", run(argv, cluster=command.get("cluster", False)))
        elif command.get("producer"):
            if argv[0] == "simulate":
                record("producer", run(argv + ["--preset", "tests"]))
            elif argv[0] == "train":
                record("producer", run(argv + ["--checkpoint-every", "1", "--no-progress"],
                                       stop_after_first_checkpoint=True))
            else:
                record("producer", run(argv))
        else:
            stand_in(dry["out"])


def stand_in(dry_run_output: str) -> None:
    """Empty files where the dry run says the command would write (its folder then holds files)."""
    match = WOULD_WRITE.search(dry_run_output)
    assert match, f"no 'would write:' line in\n{dry_run_output}"
    for item in match.group(1).split(", "):
        if " " not in item:  # a file; "checkpoints in FOLDER" is written as the run goes
            path = pathlib.Path(item)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()


if __name__ == "__main__":
    with open(sys.argv[1]) as handle:
        walk(json.load(handle), sys.argv[2])
