"""`genrank-jax train` end to end: simulator (with oracle column), MovieLens (without), clear data errors."""

import json

import pytest

from genrank_jax import cli

# tiny and short: these check the plumbing, not the model
FAST = ["--preset", "tiny", "--steps", "3", "--batch-size", "16", "--max-history", "16", "--no-progress"]


def test_train_synthetic_writes_metrics_and_prints_oracle_table(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--data", "synthetic:tests", "--out", str(out), *FAST, "--steps", "5",
                     "--eval-every", "2"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    tasks = report["config"]["features"]["action_names"]
    assert report["steps"] == 5 and report["data"] == "synthetic:tests"
    # the validation curve (every 2 steps and the last), the best of it, and its picture
    curve = report["validation_curve"]
    assert [entry["step"] for entry in curve] == [2, 4, 5]
    assert all(entry["train_loss"] > 0 and 0 <= entry["auc"] <= 1 and set(entry["tasks"]) == set(tasks)
               for entry in curve)
    best = max(curve, key=lambda entry: entry["auc"])
    assert report["best"]["step"] == best["step"] and report["eval_state"] == "best validation"
    assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["command"].startswith("genrank-jax train --data synthetic:tests")
    assert report["machine"]["platform"] and report["machine"]["jax_version"]
    assert 0.0 <= report["padding_ratio"] < 1.0
    assert set(report["eval"]) == set(tasks) == set(report["oracle_auc"])
    for task in tasks:
        row = report["eval"][task]
        assert 0.0 <= row["auc"] <= 1.0 and 0.0 <= row["gauc"] <= 1.0 and row["logloss"] > 0
    printed = capsys.readouterr().out
    assert f"best validation state: step {best['step']} " in printed
    assert "defaults for small data" in printed  # synthetic:tests is ml-100k-sized
    table_header = next(line for line in printed.splitlines() if line.startswith("task"))
    assert "AUC" in table_header and "GAUC" in table_header and "oracle AUC" in table_header
    for task in tasks:  # one row per task, its AUC as printed equals metrics.json's
        line = next(line for line in printed.splitlines() if line.split()[:1] == [task])
        assert float(line.split()[1]) == pytest.approx(report["eval"][task]["auc"], abs=1e-4)


def test_train_movielens_has_no_oracle_column(shared_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GENRANK_TFDS_DIR", str(tmp_path / "tfds"))  # prepare into tmp, not ~/.cache
    out = tmp_path / "run"
    argv = ["train", "--data", "movielens:100k", "--data-dir", str(shared_data / "ml-100k"), "--out", str(out)]
    assert cli.main(argv + FAST) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["oracle_auc"] is None
    assert set(report["eval"]) == {"like", "love", "dislike"}
    printed = capsys.readouterr().out
    assert "oracle" not in printed and "movielens:100k" in printed
    assert any(line.split()[:1] == ["like"] for line in printed.splitlines())


def test_real_data_without_data_dir_names_what_is_missing(tmp_path):
    with pytest.raises(SystemExit) as missing_option:
        cli.main(["train", "--data", "kuairand:pure", "--out", str(tmp_path), *FAST])
    message = str(missing_option.value)
    assert "--data-dir" in message and "log_standard_4_08_to_4_21_<s>.csv" in message and "kuairand.com" in message
    with pytest.raises(SystemExit) as missing_file:  # a folder without the files: the first absent file
        cli.main(["train", "--data", "kuairand:pure", "--data-dir", str(tmp_path), "--out", str(tmp_path), *FAST])
    assert "log_standard_4_08_to_4_21_pure.csv not found" in str(missing_file.value)
