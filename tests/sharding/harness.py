"""Run a `workers` scenario in a fresh Python with N simulated CPU devices."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def worker_command(name: str, *args) -> list[str]:
    return [sys.executable, "-m", "tests.sharding.workers", name, *map(str, args)]


def worker_env(devices: int) -> dict[str, str]:
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f]
    return {**os.environ, "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])}


def run_worker(name: str, *args, devices: int, timeout: int = 600) -> str:
    """stdout of the scenario; fails the test with its output when it exits non-zero."""
    done = subprocess.run(worker_command(name, *args), cwd=ROOT, env=worker_env(devices), capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"{name} {args} on {devices} devices failed:\n{done.stdout}\n{done.stderr[-6000:]}"
    return done.stdout
