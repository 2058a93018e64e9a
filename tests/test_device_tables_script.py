"""The tables' GPU call cannot rot unnoticed: `bench/device_tables.sh --dry-run` runs three tiny jobs
of its queue on the CPU (a history-loss stream, the features baseline on epochs, DIN on a feed with
one phenomenon) and must pack what a GPU run packs; and a prepared dataset reads back equal."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tarfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from genrank_jax.data.synthetic import SimulatorConfig, simulate  # noqa: E402
from prepared_data import load, save  # noqa: E402
from table_jobs import jobs  # noqa: E402


def test_dry_run_packs_every_jobs_rows(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    result = subprocess.run(["bash", "bench/device_tables.sh", "--dry-run"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "finished 3 of 3 jobs" in result.stdout, result.stdout[-4000:]
    with tarfile.open(tmp_path / "results.tar.gz") as tar:
        rows = {pathlib.Path(name).stem: json.load(tar.extractfile(name))["rows"]
                for name in tar.getnames() if name.endswith(".json")}
    assert sorted(rows) == ["tests_epochs_features", "tests_stream_din_fatigue", "tests_stream_genrank-historyloss"]
    stream = rows["tests_stream_genrank-historyloss"][0]
    assert stream["model"] == "genrank-historyloss" and json.loads(stream["config"])["history_loss"]
    assert 0.5 < stream["eval"]["click"]["auc"] < 1 and stream["stream"]["after_warmup"]
    assert "--sim=fatigue=0.3" in rows["tests_stream_din_fatigue"][0]["command"]


def test_the_job_list_names_each_job_once():
    lines = jobs("prepared")
    names = [line.split("\t")[0] for line in lines]
    assert len(names) == len(set(names)) and names[0] == "feed_stream_genrank"
    assert all("--prepared prepared/ml-" in line for line in lines if "movielens" in line)


def test_a_prepared_dataset_reads_back_equal(tmp_path):
    dataset = simulate(SimulatorConfig.preset("tests")).dataset
    save(dataset, tmp_path / "tests.npz")
    back = load(tmp_path / "tests.npz")

    def same(a, b, where):
        if dataclasses.is_dataclass(a):
            for field in dataclasses.fields(a):
                same(getattr(a, field.name), getattr(b, field.name), f"{where}.{field.name}")
        elif isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b), where
        elif isinstance(a, dict):
            assert sorted(a) == sorted(b), where
            for key in a:
                same(a[key], b[key], f"{where}/{key}")
        elif isinstance(a, (tuple, list)):
            assert list(a) == list(b), where
        else:
            assert a == b, where

    same(dataset, back, "dataset")
