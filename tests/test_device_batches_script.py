"""The device-batch GPU call cannot rot unnoticed: `bench/device_batches.sh --dry-run` runs its steps
on the CPU at a tiny size and must write what a GPU run writes, with device batches equal to numpy's."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_dry_run_writes_every_file_and_identical_batches(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    result = subprocess.run(["bash", "bench/device_batches.sh", "--dry-run"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in summary] == ["env", "bench", "tests"]
    assert all(": exit 0 after" in line for line in summary), summary
    assert (tmp_path / "tests.xml").exists() and "jax" in (tmp_path / "env.txt").read_text()
    rows = json.loads((tmp_path / "device_batches.json").read_text())["rows"]
    builders = [row for row in rows if row["measure"].startswith("device builder")]
    assert [row["batch_size"] for row in builders] == [16, 64]
    assert all(row["identical_to_host"] and row["timestamp_max_ulps"] <= 2 and row["exposures_per_s"] > 0
               for row in builders)
    measures = {row["measure"] for row in rows}
    assert {"host side alone (plan, shapes, request indices)", "host builder (numpy), 1 process",
            "Trainer.fit, host batches", "Trainer.fit, device batches"} <= measures
