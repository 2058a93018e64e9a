"""Where runs write (issue 25): without `--out` the next free `runs/<command>-N`, named in the first
line; `--resume` without `--out` takes the newest train run or refuses with the choices; a run that
saved nothing removes the folders it created, and only those."""

from __future__ import annotations

import pathlib
import shutil

import pytest

from genrank_jax.cli import output_folder
from tests.cli_runs import FAST, run


def test_numbered_runs_never_reuse_a_taken_name(tmp_path):
    root = tmp_path / "runs"
    assert output_folder.next_run("train", root) == root / "train-1" and output_folder.newest_run("train", root) is None
    for name in ("train-1", "train-3", "train-x", "lis-7", "train-10-old"):
        (root / name).mkdir(parents=True)
    (root / "train-11").write_text("a file takes a number too")
    assert output_folder.numbered_runs("train", root) == [root / "train-1", root / "train-3"]
    assert output_folder.newest_run("train", root) == root / "train-3"
    assert output_folder.next_run("train", root) == root / "train-12"
    created = output_folder.CreatedFolders()
    assert output_folder.reserve_run("lis", created, root) == root / "lis-8" and (root / "lis-8").is_dir()
    assert created.folders == [root / "lis-8"]  # runs/ was there already: not this run's to remove


def test_train_runs_without_out_never_collide_and_resume_takes_the_newest(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["train", "--resume", *FAST], capsys)  # nothing to resume yet
    assert code == 2 and "resumes the newest runs/train-N, and there is none" in err and "--out" in err
    assert not (tmp_path / "runs").exists()

    code, out, err = run(["train", *FAST, "--checkpoint-every", "1"], capsys)
    assert code == 0, err
    assert out.splitlines()[0] == "run folder: runs/train-1 (the next free runs/train-N; --out chooses another)"
    code, out, err = run(["train", *FAST], capsys)  # the same command again: a folder of its own
    assert code == 0, err
    assert out.splitlines()[0].startswith("run folder: runs/train-2 ")
    assert (tmp_path / "runs/train-2/metrics.json").exists() and (tmp_path / "runs/train-1/checkpoints/1").is_dir()

    # the newest run holds no checkpoint: refused, naming the runs that do
    code, out, err = run(["train", "--resume", *FAST], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert ("the newest run, runs/train-2, which holds no checkpoint; runs with checkpoints: runs/train-1 (step 1)"
            in err)

    # --resume --out picks one; without --out, once train-2 is gone, the newest is train-1
    shutil.rmtree(tmp_path / "runs/train-2")
    code, out, err = run(["train", "--resume", *FAST, "--steps", "2", "--allow-setting-changes"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "run folder: runs/train-1 (the newest runs/train-N, resumed; --out names another)"
    # the step count is this run's, not the total with another run's time
    assert any(line.startswith("resumed at step 1; trained 1 more steps in ") and "s (step 2 now)" in line
               for line in lines), out


def test_a_failed_run_removes_the_folders_it_made_and_only_those(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    too_big = ["--batch-size", "1000000000"]  # refused after the data loads, before anything is saved
    code, out, err = run(["train", *FAST, *too_big], capsys)
    assert code == 2 and out.startswith("run folder: runs/train-1")
    assert not (tmp_path / "runs").exists()  # the run folder and runs/ it made: gone

    code, _, err = run(["train", *FAST, *too_big, "--out", str(tmp_path / "new/a/b")], capsys)
    assert code == 2 and not (tmp_path / "new").exists()

    (tmp_path / "mine").mkdir()  # a folder that was there before the run stays
    code, _, err = run(["train", *FAST, *too_big, "--out", str(tmp_path / "mine")], capsys)
    assert code == 2 and (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())

    (tmp_path / "runs/train-1").mkdir(parents=True)  # another run's: runs/ is shared, kept
    code, out, _ = run(["train", *FAST, *too_big], capsys)
    assert code == 2 and out.startswith("run folder: runs/train-2")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["train-1"]

    # the other commands: lis (a task the data lacks), export (no checkpoint), simulate (no preset)
    for argv in (["lis", "--task", "nope", "--no-progress", "--sequential"], ["export", "--checkpoint", "absent"],
                 ["simulate", "--preset", "nope"]):
        code, out, err = run(argv, capsys)
        assert code == 2 and f"runs/{argv[0]}-1 (the next free" in out.splitlines()[0], (argv, out, err)
        assert not (tmp_path / "runs" / f"{argv[0]}-1").exists(), argv


def test_an_interrupted_run_that_saved_a_checkpoint_keeps_its_folder(tmp_path, monkeypatch, capsys):
    from genrank_jax.training.checkpoint import Checkpoints

    monkeypatch.chdir(tmp_path)
    saving = Checkpoints.save

    def save_then_ctrl_c(self, *args, **kwargs):
        saving(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoints, "save", save_then_ctrl_c)
    code, _, err = run(["train", *FAST, "--steps", "3", "--checkpoint-every", "1"], capsys)
    assert code == 130 and err.strip() == "genrank-jax train: interrupted"
    assert (tmp_path / "runs/train-1/checkpoints/1").is_dir()  # resumable: kept


def test_user_command_never_shows_this_machine_s_absolute_paths():
    from genrank_jax.cli.command_line import user_command

    words = ["genrank-jax", "lis", "--data-dir", "/home/ann/data/ml-100k", "--out", "/work/repo/runs/x",
             "--features", "mllm=/home/ann/items.npy", "a+b=/srv/x y.npy", "--out=/home/ann/o", "--data", "log:/srv/l",
             "relative/path", "/work/shared/d"]
    line = user_command(words, cwd="/work/repo", home="/home/ann")
    assert line == ("genrank-jax lis --data-dir ~/data/ml-100k --out runs/x --features mllm=~/items.npy "
                    "'a+b=../../srv/x y.npy' --out=../../home/ann/o --data log:../../srv/l relative/path ../shared/d")
    assert "/home/ann" not in line.replace("../../home/ann", "")


def test_version_names_the_package_jax_flax_and_backend(capsys):
    import re

    import flax
    import jax

    import genrank_jax

    code, out, err = run(["--version"], capsys)
    assert code == 0 and err == ""
    assert re.fullmatch(rf"genrank-jax {re.escape(genrank_jax.__version__)} \(jax {re.escape(jax.__version__)}, "
                        rf"flax {re.escape(flax.__version__)}, backend {jax.default_backend()}: \d+ x .+\)\n", out), out


@pytest.fixture(autouse=True)
def _no_runs_left_in_the_checkout():
    """No test here may write runs/ into the working tree (each changes into its tmp_path)."""
    yield
    assert not (pathlib.Path(__file__).resolve().parents[1] / "runs").exists()
