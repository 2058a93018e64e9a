"""`--dry-run` (issue 25): the run's own checks, the run's own one-line errors, and nothing written."""

from __future__ import annotations

import os
import pathlib

import pytest

from tests.cli_runs import FAST, run
from tests.data import own_log_files


def files_under(*roots: pathlib.Path) -> dict[str, tuple]:
    found = {}
    for root in roots:
        for folder, _, names in os.walk(root):
            found[folder] = ()
            for name in names:
                stat = (pathlib.Path(folder) / name).stat()
                found[str(pathlib.Path(folder) / name)] = (stat.st_size, stat.st_mtime_ns)
    return found


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """A fresh working folder and an empty prepared-data cache."""
    work, cache = tmp_path / "work", tmp_path / "tfds"
    work.mkdir()
    cache.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("GENRANK_TFDS_DIR", str(cache))
    return work


def bad_log(folder: pathlib.Path) -> list[str]:
    """A log whose first batch has an action that is not 0/1 (row 5)."""
    table = own_log_files.log_table()
    liked = table.column("liked").to_numpy().copy()
    liked[4] = 2
    log, schema = own_log_files.write(folder, own_log_files.replace_column(table, "liked", liked))
    return ["--data", f"log:{log}", "--schema", str(schema)]


CASES = {
    "batch larger than the data": lambda tmp: ["train", *FAST, "--batch-size", "1000000000"],
    "mesh larger than the machine": lambda tmp: ["train", *FAST, "--mesh", "data=3"],
    "no cluster to join": lambda tmp: ["train", *FAST, "--distributed"],
    "steps with epochs": lambda tmp: ["train", *FAST, "--epochs", "2"],
    "missing data files": lambda tmp: ["train", *FAST, "--data", "movielens:100k", "--data-dir", str(tmp / "none")],
    "bad first batch of a log": lambda tmp: ["train", *FAST, *bad_log(tmp / "log")],
    "missing log": lambda tmp: ["train", *FAST, "--data", f"log:{tmp / 'absent.parquet'}", "--schema",
                                str(own_log_files.write(tmp / "schema_only")[1])],
    "resume of nothing": lambda tmp: ["train", *FAST, "--resume", "--out", str(tmp / "never")],
    "lis task the data lacks": lambda tmp: ["lis", "--task", "nope", "--seeds", "1", "--no-progress", "--sequential"],
    "lis side feature the data lacks":
        lambda tmp: ["lis", "--features", "g=side:genre", "--seeds", "1", "--sequential"],
    "lis bound that is no leak": lambda tmp: ["lis", "--bound", "nope@7d"],
    "export of a missing checkpoint": lambda tmp: ["export", "--checkpoint", str(tmp / "none")],
    "export platform": lambda tmp: ["export", "--checkpoint", str(tmp / "none"), "--platforms", "metal"],
    "simulate preset": lambda tmp: ["simulate", "--preset", "nope"],
}


@pytest.mark.parametrize("case", CASES)
def test_dry_run_refuses_with_the_run_s_own_error_and_writes_nothing(case, fresh, tmp_path, capsys):
    argv = CASES[case](tmp_path)
    roots = (fresh, tmp_path / "tfds")
    before = files_under(*roots)
    code, out, err = run([*argv, "--dry-run"], capsys)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"genrank-jax {argv[0]}: "), err
    assert files_under(*roots) == before  # nothing written, nothing prepared
    real_code, _, real_err = run(argv, capsys)
    assert (real_code, real_err) == (code, err)


def test_dry_run_of_a_train_run_says_what_it_would_do(fresh, tmp_path, capsys):
    before = files_under(fresh, tmp_path / "tfds")
    code, out, err = run(["train", "--data", "synthetic:tests", "--checkpoint-every", "50", "--dry-run"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "run folder: runs/train-1 (the next free runs/train-N; --out chooses another)"
    assert lines[-1] == "dry run: nothing was written"
    text = "\n".join(lines)
    for expected in ("data: synthetic:tests (the feed simulator, seed 0): 30,000 exposures",
                     "defaults for small data", "model: genrank/action/transformer, preset tiny: ",
                     "steps: at most ", "validated on ", "expected time: ",
                     "would write: runs/train-1/metrics.json, runs/train-1/training.png, checkpoints in "
                     "runs/train-1/checkpoints"):
        assert expected in text, (expected, text)
    assert files_under(fresh, tmp_path / "tfds") == before


def test_dry_run_of_a_log_reads_its_first_batch_and_prepares_nothing(fresh, tmp_path, capsys):
    log, schema = own_log_files.write(tmp_path / "log")
    cache = tmp_path / "tfds"
    code, out, err = run(["train", "--data", f"log:{log}", "--schema", str(schema), "--dry-run"], capsys)
    assert code == 0, err
    assert "first batch: 3,000 rows read and checked against the schema" in out and "not prepared yet" in out
    assert not any(cache.iterdir())
    # once a run prepared it, the dry run reads the prepared data: the model and the steps
    assert run(["train", "--data", f"log:{log}", "--schema", str(schema), *FAST[2:], "--out", "r"], capsys)[0] == 0
    code, out, err = run(["train", "--data", f"log:{log}", "--schema", str(schema), "--dry-run"], capsys)
    assert code == 0 and "prepared and loaded before" in out and "model: genrank/action/transformer" in out, out


def test_dry_run_of_a_resume_and_an_export_opens_the_checkpoint(fresh, capsys):
    assert run(["train", *FAST, "--checkpoint-every", "1", "--out", "r"], capsys)[0] == 0
    code, out, err = run(["train", *FAST, "--resume", "--out", "r", "--dry-run"], capsys)
    assert code == 0 and "resume: from step 1 (verified: checksums, finite, same model and settings)" in out, err
    # other settings: the run's own refusal
    code, _, err = run(["train", *FAST, "--steps", "5", "--resume", "--out", "r", "--dry-run"], capsys)
    assert code == 2 and "other training settings: train.steps: saved 1, now 5" in err
    code, out, err = run(["export", "--checkpoint", "r/checkpoints", "--dry-run"], capsys)
    assert code == 0, err
    assert "checkpoint: step 1 of r/checkpoints (verified: checksums, finite)" in out and "runs/export-1" in out
    assert "aggregates.json" in out  # the default GenRank reads aggregate features: its scaling goes along
    assert sorted(p.name for p in fresh.iterdir()) == ["r"]  # no runs/export-1


def test_a_lis_dry_run_estimates_its_time_from_the_measured_run():
    from genrank_jax.leakage.cli import MEASURED_LIS_RUN, lis_expected_time
    from genrank_jax.leakage.probe import ProbeConfig

    run = MEASURED_LIS_RUN
    same = lis_expected_time(ProbeConfig(model="mlp"), run["probes"], run["train_rows"])
    assert same.startswith(f"about {run['seconds']:.0f} s for at most {run['probes']} probes"), same
    # twice the probes on half the rows: the same work; twice the epochs: twice the time
    half = lis_expected_time(ProbeConfig(model="mlp"), 2 * run["probes"], run["train_rows"] / 2)
    assert half.startswith(f"about {run['seconds']:.0f} s"), half
    doubled = lis_expected_time(ProbeConfig(model="mlp", epochs=4), run["probes"], run["train_rows"])
    assert doubled.startswith(f"about {2 * run['seconds'] / 60:.1f} min"), doubled
    assert lis_expected_time(ProbeConfig(model="mlp"), 10, None).startswith("not known before the data is prepared")
    assert "not measured for" in lis_expected_time(ProbeConfig(model="mlp"), 10, 1000, sequential=True)
