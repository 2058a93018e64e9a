"""`genrank-jax lis` never replaces a report by accident, checks its options before any probe
trains, and never loses a computed report (issue 21)."""

from __future__ import annotations

import numpy as np

from genrank_jax.cli import main

FAST = ["--data", "synthetic:tests", "--seeds", "2", "--leaks", "next_item", "--horizon", "7d", "--no-progress"]


def test_occupied_out_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    out = tmp_path / "report"
    out.mkdir()
    (out / "lis.md").write_text("an earlier 2-seed report")
    from genrank_jax.leakage import cli as lis_cli

    monkeypatch.setattr(lis_cli, "leakage_impact", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained")))
    assert main(["lis", *FAST, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "already holds files" in err and "--overwrite" in err and "\n" not in err
    assert (out / "lis.md").read_text() == "an earlier 2-seed report"


def test_bad_bound_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    from genrank_jax.leakage import cli as lis_cli

    monkeypatch.setattr(lis_cli, "leakage_impact", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained")))
    assert main(["lis", *FAST, "--bound", "next_item@30d", "--out", str(tmp_path / "r")]) == 2
    assert "--bound 'next_item@30d' is not a leak row" in capsys.readouterr().err


def test_overwrite_replaces_the_report_whole_and_a_failed_write_keeps_it(tmp_path, capsys, monkeypatch):
    out = tmp_path / "report"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert main(["lis", *FAST, "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["lis.json", "lis.md", "lis.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    from genrank_jax.cli import output_folder

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(output_folder, "written_whole", broken)
    capsys.readouterr()
    assert main(["lis", *FAST, "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip()
    assert "No space left on device" in err and "saved in" in err
    saved = err.rsplit("saved in ", 1)[1].split(": ")[0]
    import pathlib

    assert (pathlib.Path(saved) / "lis.md").read_text().startswith("| feature")


def test_a_report_that_cannot_be_drawn_is_kept(tmp_path, capsys, monkeypatch):
    import pathlib

    from genrank_jax.leakage.report import LeakageReport

    monkeypatch.setattr(LeakageReport, "plot", lambda self, path: (_ for _ in ()).throw(RuntimeError("no backend")))
    assert main(["lis", *FAST, "--out", str(tmp_path / "report")]) == 2
    captured = capsys.readouterr()
    assert "| feature" in captured.out  # the table is printed before any file is written
    err = captured.err.strip()
    assert "RuntimeError: no backend" in err and err.endswith("lis.json, lis.md") and "\n" not in err
    saved = pathlib.Path(err.rsplit("saved in ", 1)[1].split(": ")[0])
    assert (saved / "lis.md").read_text().startswith("| feature")
    assert not (tmp_path / "report").exists()


def test_features_are_checked_before_the_data_loads(tmp_path, capsys, monkeypatch):
    from genrank_jax.data import sources

    monkeypatch.setattr(sources, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    text = tmp_path / "text.npy"
    text.write_text("0.1,0.2\n")
    np.save(tmp_path / "ok.npy", np.random.default_rng(0).normal(size=(4, 2)).astype(np.float32))
    for spec, message in [(f"mllm={text}", "--features mllm: "), (f"next_item@7d={tmp_path / 'ok.npy'}",
                                                                   "'next_item@7d' is taken by a leak")]:
        assert main(["lis", *FAST, "--features", spec, "--out", str(tmp_path / "r")]) == 2
        assert message in capsys.readouterr().err
