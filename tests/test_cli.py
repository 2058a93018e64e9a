"""`genrank-jax train` end to end: simulator (with oracle column), MovieLens (without), clear data errors."""

import json
import pathlib
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genrank_jax import cli
from genrank_jax.cli import commands
from genrank_jax.errors import GenRankError

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


def test_train_movielens_has_no_oracle_column(tmp_path, capsys, monkeypatch):
    """A real dataset's files in the GroupLens format (a small log: preparing all of ml-100k took
    most of this test's 22 s and proves nothing more about the table)."""
    from tests.data import fixtures

    monkeypatch.setenv("GENRANK_TFDS_DIR", str(tmp_path / "tfds"))  # prepare into tmp, not ~/.cache
    fixtures.write_grouplens_100k(tmp_path / "raw", fixtures.movielens_log(seed=1))
    out = tmp_path / "run"
    argv = ["train", "--data", "movielens:100k", "--data-dir", str(tmp_path / "raw"), "--out", str(out),
            "--validation-fraction", "0"]
    assert cli.main(argv + FAST + ["--batch-size", "4"]) == 0  # the fixture has 8 train requests
    report = json.loads((out / "metrics.json").read_text())
    assert report["oracle_auc"] is None
    assert set(report["eval"]) == {"like", "love", "dislike"}
    printed = capsys.readouterr().out
    assert "oracle" not in printed and "movielens:100k" in printed
    assert any(line.split()[:1] == ["like"] for line in printed.splitlines())


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `genrank-jax <argv>`, however it exits."""
    try:
        code = cli.main(argv)
    except SystemExit as stop:  # argparse exits; everything else returns its code
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, command):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"genrank-jax {command}: "), err
    assert "Traceback" not in err and "skip_bad_rows=True" not in err
    return lines[0]


def test_real_data_without_data_dir_names_what_is_missing(tmp_path, capsys):
    code, _, err = run_cli(["train", "--data", "kuairand:pure", "--out", str(tmp_path), *FAST], capsys)
    line = assert_one_line_error(code, err, "train")
    assert "--data-dir" in line and "log_standard_4_08_to_4_21_<s>.csv" in line and "kuairand.com" in line
    assert "data_dir=" not in line  # the Python keyword is for library callers
    # a folder without the files: the first absent file
    code, _, err = run_cli(["train", "--data", "kuairand:pure", "--data-dir", str(tmp_path), "--out", str(tmp_path),
                            *FAST], capsys)
    assert "log_standard_4_08_to_4_21_pure.csv not found" in assert_one_line_error(code, err, "train")


@pytest.mark.parametrize("argv, option", [
    (["train", "--learning-rate", "-1"], "--learning-rate"),
    (["train", "--learning-rate", "nan"], "--learning-rate"),
    (["train", "--checkpoint-every", "-1"], "--checkpoint-every"),
    (["train", "--steps", "0"], "--steps"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--max-history", "-3"], "--max-history"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--steps", "ten"], "--steps"),
    (["train", "--embedding-row-multiple", "0"], "--embedding-row-multiple"),
    (["train", "--num-processes", "0"], "--num-processes"),
    (["train", "--process-id", "-1"], "--process-id"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--patience", "-1"], "--patience"),
    (["train", "--eval-every", "-5"], "--eval-every"),
    (["train", "--validation-fraction", "1"], "--validation-fraction"),
    (["train", "--validation-fraction", "-0.1"], "--validation-fraction"),
    (["train", "--weight-decay", "-0.0001"], "--weight-decay"),
    (["lis", "--seeds", "0"], "--seeds"),
    (["lis", "--epochs", "-1"], "--epochs"),
    (["lis", "--batch-size", "0"], "--batch-size"),
    (["lis", "--dim", "0"], "--dim"),
    (["lis", "--table-optimizer", "sgd"], "--table-optimizer"),
])
def test_numeric_options_are_validated(argv, option, capsys):
    code, _, err = run_cli(argv, capsys)
    line = assert_one_line_error(code, err, argv[0])
    assert f"argument {option}" in line and repr(argv[-1]) in line


@pytest.mark.parametrize("command", ["train", "lis"])
def test_unknown_source_lists_the_known_ones(command, capsys, tmp_path):
    code, _, err = run_cli([command, "--data", "foo:bar", "--out", str(tmp_path)], capsys)
    line = assert_one_line_error(code, err, command)
    assert "unknown source 'foo:bar'" in line and "movielens:100k" in line and "synthetic:tests" in line
    assert "--data-dir" not in line


@pytest.mark.parametrize("cutoff", ["2.0", "1.0", "0", "1990-01-01", "2100-01-01"])
def test_lis_cutoff_outside_the_log_names_both_dates(cutoff, capsys, tmp_path):
    from genrank_jax.data.sources import load_dataset
    from genrank_jax.leakage.times import format_time

    times = load_dataset("synthetic:tests").interactions.timestamps
    code, _, err = run_cli(["lis", "--cutoff", cutoff, "--leaks", "next_item", "--horizon", "7d", "--seeds", "1",
                            "--no-progress", "--sequential", "--out", str(tmp_path)], capsys)
    line = assert_one_line_error(code, err, "lis")
    assert f"--cutoff {cutoff} is read as" in line
    assert format_time(times.min()) in line and format_time(times.max()) in line


def test_lis_cutoff_forms_are_documented(capsys):
    code, out, _ = run_cli(["lis", "--help"], capsys)
    assert code == 0
    assert "strictly between 0 and 1" in out and "ISO date" in out and "Unix seconds" in out
    guide = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "guides" / "cli.md").read_text()
    assert "quantile" in guide and "Unix seconds" in guide and "--cutoff 2.0" in guide


def test_library_error_is_one_line_and_debug_shows_the_traceback(shared_data, tmp_path, capsys, monkeypatch):
    from genrank_jax.data.builders.rows import MalformedRowError

    monkeypatch.setenv("GENRANK_TFDS_DIR", str(tmp_path / "tfds"))
    raw = tmp_path / "ml-100k"
    raw.mkdir()
    for name in ("ml-100k.item", "ml-100k.user"):
        (raw / name).write_bytes((shared_data / "ml-100k" / name).read_bytes())
    lines = (shared_data / "ml-100k" / "ml-100k.inter").read_text().splitlines()[:300]
    lines[7] = "587\t310\t3\t8928"  # a truncated timestamp, line 8
    (raw / "ml-100k.inter").write_text("\n".join(lines) + "\n")
    argv = ["train", "--data", "movielens:100k", "--data-dir", str(raw), "--out", str(tmp_path / "run"), *FAST]
    code, _, err = run_cli(argv, capsys)
    line = assert_one_line_error(code, err, "train")
    assert "ml-100k.inter:8:" in line and "8928" in line and "truncated" in line and "--skip-bad-rows" in line
    with pytest.raises(MalformedRowError, match="ml-100k.inter:8:"):
        cli.main(argv + ["--debug"])
    with pytest.raises(MalformedRowError):
        cli.main(["--debug", *argv])

    # --skip-bad-rows reaches the loader, and the CLI says what it skipped (training is cut short:
    # the plumbing is under test, not the model)
    from genrank_jax.model.config import GenRankConfig

    def stop(*args, **kwargs):
        raise GenRankError("stopped after loading")

    monkeypatch.setattr(GenRankConfig, "preset", stop)
    code, out, err = run_cli(argv + ["--skip-bad-rows"], capsys)
    assert "stopped after loading" in assert_one_line_error(code, err, "train")
    assert "skipped 1 malformed rows of ml-100k.inter" in out


def test_defect_is_one_line_with_exit_code_1(monkeypatch, capsys):
    def broken(args):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(commands, "run_train", broken)  # the real module global
    code, _, err = run_cli(["train"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith("genrank-jax train: internal error TypeError: unsupported operand") and "--debug" in err


def test_every_subcommand_gets_the_wrapper_and_debug():
    """A subcommand added later (export, say) gets --debug and one-line errors without code of its own."""
    import argparse

    from genrank_jax.cli.command_line import CommandLineParser, add_debug_flags, run_reporting_errors

    parser = CommandLineParser(prog="genrank-jax")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("export")
    add_debug_flags(parser)
    args = parser.parse_args(["export"])
    assert args.debug is False and parser.parse_args(["export", "--debug"]).debug is True
    assert parser.parse_args(["--debug", "export"]).debug is True
    assert run_reporting_errors("genrank-jax export", lambda: (_ for _ in ()).throw(OSError("disk full"))) == 2
    with pytest.raises(OSError):
        run_reporting_errors("genrank-jax export", lambda: (_ for _ in ()).throw(OSError("disk full")), debug=True)
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["export", "--nope"])
    assert stop.value.code == 2
    assert isinstance(parser, argparse.ArgumentParser)


@settings(max_examples=25, deadline=None)
@given(first=st.integers(800_000_000, 1_700_000_000), span=st.integers(100, 10**8), data=st.data())
def test_parse_cutoff_accepts_inside_and_names_the_range_outside(first, span, data):
    from genrank_jax.leakage.times import format_time, parse_cutoff

    inner = first + 1 + np.random.default_rng(span).choice(span - 1, 20, replace=False)  # distinct: no ties at the ends
    times = np.sort(np.concatenate([[first, first + span], inner]))
    quantile = data.draw(st.floats(0.01, 0.99))
    assert times.min() < parse_cutoff(repr(quantile), times) <= times.max()
    inside = data.draw(st.integers(first + 1, first + span))
    assert parse_cutoff(str(inside), times) == inside
    assert parse_cutoff(format_time(inside).replace(" UTC", "+00:00"), times) == inside
    outside = data.draw(st.one_of(st.integers(-10**9, first), st.integers(first + span + 1, 4 * 10**9),
                                  st.sampled_from([0, 1, 2])))
    with pytest.raises(ValueError) as error:
        parse_cutoff(f"{outside}.0", times)
    message = str(error.value)
    assert f"the log runs from {format_time(first)} to {format_time(first + span)}" in message
    assert "quantile in (0, 1)" in message and "Unix seconds" in message


def test_leakage_module_entry_point_reports_one_line(capsys):
    from genrank_jax.leakage import cli as leakage_cli

    with pytest.raises(SystemExit) as stop:
        leakage_cli.main(["--seeds", "0"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == ("genrank-jax lis: argument --seeds: expected a positive integer, "
                                               "got '0' (see genrank-jax lis --help)")
    assert leakage_cli.main(["--leaks", "next_item,teleport", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genrank-jax lis: unknown leak kinds ['teleport']; choose among") and "\n" not in err


def test_every_real_subcommand_has_debug_and_runs_through_the_wrapper(capsys):
    import argparse

    parser = cli.build_parser()
    (subcommands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert {"train", "lis", "export"} <= set(subcommands.choices)
    for name, sub in subcommands.choices.items():
        assert any("--debug" in action.option_strings for action in sub._actions), name
        assert callable(sub.get_default("run")), name
        code, _, err = run_cli([name, "--no-such-option"], capsys)  # a usage error: one line, exit 2
        assert code == 2 and err.strip().splitlines() == [err.strip()] and err.startswith(f"genrank-jax {name}: "), err


@settings(max_examples=40, deadline=None)
@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6)))
def test_number_validators_agree_with_their_definition(value):
    import argparse
    import math

    from genrank_jax.cli import command_line as options

    text = repr(value) if isinstance(value, float) else str(value)
    definitions = {
        options.positive_float: lambda v: math.isfinite(v) and v > 0,
        options.non_negative_float: lambda v: math.isfinite(v) and v >= 0,
        options.fraction: lambda v: math.isfinite(v) and 0 <= v < 1,
        options.positive_int: lambda v: isinstance(v, int) and v > 0,
        options.non_negative_int: lambda v: isinstance(v, int) and v >= 0,
    }
    for check, holds in definitions.items():
        if holds(value):
            assert check(text) == value
        else:
            with pytest.raises(argparse.ArgumentTypeError, match=f"got {re.escape(repr(text))}"):
                check(text)


def test_steps_with_epochs_is_refused_before_any_data_is_read(tmp_path, capsys):
    """`--steps` with `--epochs` used to train `--epochs` and ignore `--steps` without a word."""
    code, _, err = run_cli(["train", "--data", "movielens:100k", "--data-dir", str(tmp_path / "absent"),
                            "--out", str(tmp_path / "run"), "--steps", "5", "--epochs", "2"], capsys)
    line = assert_one_line_error(code, err, "train")
    assert "--steps 5 and --epochs 2 both set the length of the run: give one" in line
    assert not (tmp_path / "run").exists()
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "giving both is an error" in " ".join(help_text.split())


def test_a_small_eval_set_is_sized_and_warned(tmp_path, capsys, monkeypatch):
    """A split leaving a handful of eval rows used to print a metrics table without saying so."""
    from tests.data import fixtures

    monkeypatch.setenv("GENRANK_TFDS_DIR", str(tmp_path / "tfds"))
    fixtures.write_grouplens_100k(tmp_path / "raw", fixtures.movielens_log(seed=1))
    code, out, err = run_cli(["train", "--data", "movielens:100k", "--data-dir", str(tmp_path / "raw"),
                              "--out", str(tmp_path / "run"), "--validation-fraction", "0", *FAST,
                              "--batch-size", "4"], capsys)  # the fixture has 8 train requests
    assert code == 0, err
    size = re.search(r"eval set: (\d+) requests, (\d+) scored exposures", out)
    assert size and 0 < int(size.group(2)) < 1000, out
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert report["eval"]  # the table is still printed, after its size
    assert out.index("eval set:") < out.index("task ")
    assert f"genrank-jax train: warning: the eval set has only {size.group(2)} scored exposures (under 1,000)" in err
