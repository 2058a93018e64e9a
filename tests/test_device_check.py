"""The one-call GPU check cannot rot unnoticed: `bench/device_check.sh --dry-run` runs every stage
on the CPU (interpret mode, tiny sizes) and must write the same files a GPU run writes."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
STAGES = ("env", "smoke", "self_check", "headline", "parity_pallas_triton", "parity_pallas_mosaic_gpu", "sweep")
BENCH_IMPLS = {"pallas_mosaic_gpu", "pallas_triton", "dpa", "xla"}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("device_check")
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    result = subprocess.run(["bash", "bench/device_check.sh", "--dry-run"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return out, result.stdout


def test_every_stage_ran_and_passed(dry_run):
    out, stdout = dry_run
    summary = (out / "summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in summary] == list(STAGES)
    assert all(": exit 0 after" in line for line in summary), summary
    assert "jax" in (out / "env.txt").read_text()
    assert (out / "nvidia-smi.txt").exists()


def test_smoke_rows_are_every_backend_and_kind_within_tolerance(dry_run):
    rows = json.loads((dry_run[0] / "smoke.json").read_text())["rows"]
    assert {(row["impl"], row["kind"]) for row in rows} == {
        (impl, kind) for impl in ("pallas_triton", "pallas_mosaic_gpu", "xla")
        for kind in ("softmax", "silu")}
    for row in rows:
        assert row["ok"], row
        assert 0 < row["out_max_error"] < 2e-2 and 0 < row["dq_max_error"] < 4e-2, row


def test_benchmarks_measured_every_backend(dry_run):
    headline = json.loads((dry_run[0] / "attention_headline.json").read_text())
    assert {row["impl"] for row in headline["rows"]} == BENCH_IMPLS
    for row in headline["rows"]:
        assert "skipped" not in row, row
        assert row["fwd_tflops"] > 0 and row["fwd_bwd_tflops"] > 0
    sweep = json.loads((dry_run[0] / "attention_sweep.json").read_text())["rows"]
    # the headline's S x D is excluded from the sweep, the other is measured
    assert {(row["seq_len"], row["head_dim"]) for row in sweep} == {(16, 32)}
    assert all("fwd_ms" in row for row in sweep)


@pytest.mark.parametrize("impl", ["pallas_triton", "pallas_mosaic_gpu"])
def test_parity_stage_writes_junit_per_backend(dry_run, impl):
    suite = ElementTree.parse(dry_run[0] / f"parity_{impl}.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    cases = suite.findall("testcase")
    names = [case.get("name") for case in cases]
    assert all(impl in name for name in names), names
    assert int(suite.get("failures")) == 0 and int(suite.get("errors")) == 0
    ran = [case for case in cases if case.find("skipped") is None]
    assert ran and all("TestInterpret" in case.get("classname") for case in ran)
    # the device tests are selected too (they skip without a GPU): the model test among them
    assert any("test_model_matches_reference_on_device" in name for name in names)


def test_from_checkout_maps_the_folders_into_the_package():
    code = "import genrank_jax.kernels as k, genrank_jax.leakage as l; print(k.__file__); print(l.__file__)"
    result = subprocess.run([sys.executable, "bench/from_checkout.py", "-c", code], cwd=ROOT,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(ROOT / "kernels" / "__init__.py"),
                                     str(ROOT / "leakage" / "__init__.py")]


def test_leakage_script_parses():
    result = subprocess.run(["bash", "-n", "bench/device_leakage.sh"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
