"""Fault injection on checkpoints: damaged array files, a cut metadata file, a kill during a save, a
second run into the same folder, a resume with other settings or without --checkpoint-every.

Each case asserts the clear error and that nothing saved was lost (every file of every saved step
is byte-identical afterwards, or moved aside intact when the user asked for a fallback).
"""

import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genrank_jax import cli
from genrank_jax.data.synthetic import SimulatorConfig, simulate
from genrank_jax.model.config import GenRankConfig
from genrank_jax.training import NonFiniteLossError, OutputInUseError, TrainConfig, Trainer
from genrank_jax.training.checkpoint import (
    CheckpointError,
    Checkpoints,
    CorruptCheckpointError,
    SettingsMismatchError,
    abstract_like,
)

REPO = pathlib.Path(__file__).resolve().parents[1]


def files_of(folder: pathlib.Path) -> dict[str, str]:
    """{relative path: SHA-256} of every file under `folder`."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def random_state(rng, step):
    return {"w": jnp.asarray(rng.normal(size=(192, 256)).astype(np.float32)),
            "adam": {"mu": jnp.asarray(rng.normal(size=(64,)).astype(np.float32)), "count": jnp.int32(step)}}


@pytest.fixture()
def saved(tmp_path):
    """Checkpoints at steps 2, 4, 6 of random states; returns (checkpoints, {step: state})."""
    rng = np.random.default_rng(21)
    checkpoints = Checkpoints(tmp_path / "checkpoints", config_json='{"width": 8}', settings={"learning_rate": 0.1})
    states = {step: random_state(rng, step) for step in (2, 4, 6)}
    for step, state in states.items():
        checkpoints.save(step, state)
    return checkpoints, states


def largest_array_file(step_dir: pathlib.Path) -> pathlib.Path:
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
               key=lambda p: p.stat().st_size)


def flip_bit(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def overwrite_4kb(path):
    data = bytearray(path.read_bytes())
    start = len(data) // 2 - 2048
    data[start:start + 4096] = np.random.default_rng(22).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def assert_same_tree(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("damage", [flip_bit, overwrite_4kb, truncate],
                         ids=["bit-flip", "4KB-overwritten", "truncated"])
def test_damaged_array_file_is_named_and_the_previous_good_step_offered(saved, damage):
    checkpoints, states = saved
    damage(largest_array_file(checkpoints.directory / "6"))
    before = files_of(checkpoints.directory)
    abstract = abstract_like(states[2])
    with pytest.raises(CorruptCheckpointError, match=r"step 6 .*corrupt.*latest good checkpoint is step 4") as error:
        checkpoints.restore(abstract)
    assert (error.value.step, error.value.good_step) == (6, 4)
    assert files_of(checkpoints.directory) == before  # a failed restore changes nothing
    assert not checkpoints.verify(6, abstract) and checkpoints.verify(4, abstract)

    # the automatic fallback the user asked for: step 4, with a warning; step 6 kept aside, intact
    with pytest.warns(RuntimeWarning, match=r"step 6 .*restoring the latest good checkpoint, step 4"):
        state, meta = checkpoints.restore(abstract, fallback=True)
    assert meta["step"] == 4
    assert_same_tree(state, states[4])
    assert checkpoints.all_steps() == [2, 4]
    moved = {k: v for k, v in before.items() if k.startswith("6/")}
    assert {f"6/{k}": v for k, v in files_of(checkpoints.quarantine / "6").items()} == moved
    # the next save of step 6 (training goes on from 4) is written, not skipped
    checkpoints.save(6, states[4])
    assert checkpoints.all_steps() == [2, 4, 6]


def test_cut_metadata_file_is_named(saved):
    checkpoints, states = saved
    meta_file = checkpoints.directory / "6" / "meta" / "metadata"
    meta_file.write_text(meta_file.read_text()[:40])
    with pytest.raises(CorruptCheckpointError, match=r"step 6 .*corrupt or unreadable \(metadata\).*step 4"):
        checkpoints.restore(abstract_like(states[2]))


def test_non_finite_saved_state_is_refused(saved):
    checkpoints, states = saved
    poisoned = dict(states[6], w=states[6]["w"].at[3, 5].set(jnp.inf))
    checkpoints.save(8, poisoned)  # the checksums match: only the finiteness check can catch it
    with pytest.raises(CorruptCheckpointError,
                       match=r"step 8 .*NaN or infinity in w.*latest good checkpoint is step 6"):
        checkpoints.restore(abstract_like(states[2]))
    assert checkpoints.latest_good_step(abstract_like(states[2])) == 6


def test_skipped_save_is_an_error_and_keeps_the_saved_step(saved):
    checkpoints, states = saved
    before = files_of(checkpoints.directory)
    with pytest.raises(CheckpointError, match=r"step 4 was not written.*saved steps: \[2, 4, 6\]"):
        checkpoints.save(4, states[2])
    assert files_of(checkpoints.directory) == before
    state, _ = checkpoints.restore(abstract_like(states[2]), step=4)
    assert_same_tree(state, states[4])


def test_other_settings_name_each_difference(saved):
    checkpoints, states = saved
    other = Checkpoints(checkpoints.directory, config_json='{"width": 8}',
                        settings={"learning_rate": 0.2, "batch_size": 32})
    with pytest.raises(SettingsMismatchError,
                       match=r"batch_size: saved None, now 32; learning_rate: saved 0.1, now 0.2"):
        other.restore(abstract_like(states[2]))
    _, meta = other.restore(abstract_like(states[2]), allow_setting_changes=True)
    assert meta["step"] == 6


# ---- a training run ------------------------------------------------------------------------------

TRAIN = dict(batch_size=16, max_history=24, warmup_steps=2, keep_checkpoints=3)


@pytest.fixture(scope="module")
def dataset():
    return simulate(SimulatorConfig.preset("tests")).dataset


def make_trainer(dataset, output_dir, steps=6, checkpoint_every=2, config=None, **train):
    config = config or GenRankConfig.preset("tiny", dataset.spec)
    return Trainer(config, TrainConfig(steps=steps, checkpoint_every=checkpoint_every, **{**TRAIN, **train}),
                   dataset, output_dir=output_dir)


@pytest.fixture(scope="module")
def trained_run(dataset, tmp_path_factory):
    """A run folder with checkpoints at steps 2, 4, 6 and the losses of that run."""
    folder = tmp_path_factory.mktemp("run")
    trainer = make_trainer(dataset, folder)
    losses = [h["loss"] for h in trainer.fit()]
    return folder, losses


@pytest.fixture()
def run_folder(trained_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(trained_run[0], folder)
    return folder


@pytest.mark.parametrize("second_run", [
    dict(),  # same steps: orbax would skip every save
    dict(steps=10),  # more steps: keep-last-3 would delete the first run's steps
    dict(block="hstu"),  # another model in the same folder
], ids=["same-steps", "more-steps", "other-block"])
def test_second_run_into_the_same_folder_is_refused(dataset, run_folder, second_run):
    before = files_of(run_folder)
    block = second_run.pop("block", None)
    config = GenRankConfig.preset("tiny", dataset.spec, block=block) if block else None
    trainer = make_trainer(dataset, run_folder, config=config, **second_run)
    with pytest.raises(OutputInUseError, match=r"another run's checkpoints \(steps \[2, 4, 6\]\).*Trainer.resume\(\).*"
                                               r"Trainer.overwrite_checkpoints\(\)"):
        trainer.fit()
    assert trainer.step == 0
    assert files_of(run_folder) == before


def test_overwrite_replaces_the_other_run_explicitly(dataset, run_folder):
    trainer = make_trainer(dataset, run_folder, steps=2)
    assert trainer.overwrite_checkpoints() == [2, 4, 6]
    trainer.fit()
    assert trainer.checkpoints.all_steps() == [2]
    assert make_trainer(dataset, run_folder, steps=2).resume() == 2
    assert sorted(p.name for p in run_folder.iterdir() if "replaced" in p.name) == []  # the old run is gone


def test_overwrite_keeps_the_old_run_until_the_new_one_has_saved(dataset, run_folder, monkeypatch):
    """A replacing run that dies before its first checkpoint loses nothing: the old run's steps
    stay (moved aside, then put back); they are deleted only once the new run has saved."""
    before = files_of(run_folder)
    trainer = make_trainer(dataset, run_folder, steps=4, checkpoint_every=4)
    assert trainer.overwrite_checkpoints() == [2, 4, 6]
    original_step, calls = trainer._step, []

    def dies_at_step_3(state, batch):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original_step(state, batch)

    trainer._step = dies_at_step_3
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    aside = [p for p in run_folder.iterdir() if "replaced" in p.name]
    assert len(aside) == 1 and sorted(int(p.name) for p in aside[0].iterdir() if p.name.isdigit()) == [2, 4, 6]
    assert trainer.put_back_replaced()
    assert files_of(run_folder) == before
    # a second try (after a kill -9, nothing was put back) adopts the run left aside
    again = make_trainer(dataset, run_folder, steps=4, checkpoint_every=4)
    assert again.overwrite_checkpoints() == [2, 4, 6]
    again.fit()
    assert again.checkpoints.all_steps() == [4]
    assert [p for p in run_folder.iterdir() if "replaced" in p.name] == []


def test_overwrite_deletes_the_old_run_only_after_a_checkpoint_that_verifies(saved, monkeypatch):
    checkpoints, _ = saved
    new = Checkpoints(checkpoints.directory, config_json='{"width": 8}')
    assert new.move_aside() == [2, 4, 6]
    aside, rng = new.replaced, np.random.default_rng(21)
    monkeypatch.setattr(new, "verify", lambda step, abstract: False)  # the first save reads back damaged
    new.save(1, random_state(rng, 1))
    assert aside.is_dir() and new.replaced == aside
    monkeypatch.undo()
    new.save(2, random_state(rng, 2))
    assert not aside.exists() and new.replaced is None


def test_resume_with_other_settings_names_each_difference(dataset, run_folder):
    before = files_of(run_folder)
    other = make_trainer(dataset, run_folder, learning_rate=1e-2, batch_size=8, seed=3)
    with pytest.raises(SettingsMismatchError) as error:
        other.resume()
    message = str(error.value)
    for difference in ("train.batch_size: saved 16, now 8", "train.learning_rate: saved 0.003, now 0.01",
                       "train.seed: saved 0, now 3", "allow_setting_changes=True"):
        assert difference in message
    assert files_of(run_folder) == before
    assert other.resume(allow_setting_changes=True) == 6


def test_resume_without_checkpoint_every_finds_the_saved_step(dataset, run_folder, trained_run):
    before = files_of(run_folder)
    trainer = make_trainer(dataset, run_folder, checkpoint_every=0)
    assert trainer.resume() == 6
    assert [h["loss"] for h in trainer.history] == trained_run[1]
    trainer.fit()  # nothing left to train; nothing written
    assert trainer.step == 6 and files_of(run_folder) == before


def test_nan_stop_names_the_last_verified_checkpoint(dataset, run_folder):
    trainer = make_trainer(dataset, run_folder, steps=10)
    with pytest.raises(SettingsMismatchError, match="train.steps: saved 6, now 10"):
        trainer.resume()
    assert trainer.resume(allow_setting_changes=True) == 6
    flip_bit(largest_array_file(run_folder / "checkpoints" / "6"))  # step 6 is damaged on disk
    pure = nnx.to_pure_dict(trainer.state)  # and the run diverges
    nnx.replace_by_pure_dict(trainer.state, jax.tree.map(
        lambda x: x * np.nan if jnp.issubdtype(x.dtype, jnp.floating) else x, pure))
    with pytest.raises(NonFiniteLossError, match=r"step 7; the last good \(verified\) checkpoint is step 4"):
        trainer.fit()


def test_cli_second_run_is_refused_and_resume_needs_no_checkpoint_every(tmp_path, capsys):
    out = tmp_path / "run"
    fast = ["train", "--data", "synthetic:tests", "--out", str(out), "--preset", "tiny", "--batch-size", "16",
            "--max-history", "16", "--no-progress"]
    assert cli.main([*fast, "--steps", "3", "--checkpoint-every", "1"]) == 0
    before = files_of(out)
    assert "metrics.json" in before and "checkpoints/3/commit_success.txt" in before
    capsys.readouterr()
    assert cli.main([*fast, "--steps", "3", "--checkpoint-every", "1"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"genrank-jax train: {out} holds another run's checkpoints at steps [1, 2, 3] and metrics.json (continue "
        "that run with --resume, replace it with --overwrite, or choose another --out)")
    assert cli.main([*fast, "--steps", "5", "--resume"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("genrank-jax train: checkpoint at step 3") and "train.steps: saved 3, now 5" in error
    assert error.strip().endswith("accept the change with --allow-setting-changes)")
    assert files_of(out) == before
    assert cli.main([*fast, "--steps", "3", "--resume"]) == 0  # no --checkpoint-every
    assert "resumed at step 3" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["steps"] == 3
    assert {k: v for k, v in files_of(out).items() if k.startswith("checkpoints/")} == \
        {k: v for k, v in before.items() if k.startswith("checkpoints/")}
    flip_bit(largest_array_file(out / "checkpoints" / "3"))
    assert cli.main([*fast, "--steps", "3", "--resume"]) == 2
    assert "step 3" in (error := capsys.readouterr().err) and "latest good checkpoint is step 2" in error
    assert "--resume --resume-fallback" in error
    assert cli.main([*fast, "--steps", "3", "--resume", "--resume-fallback"]) == 0
    assert "resumed at step 2" in capsys.readouterr().out
    assert (out / "checkpoints.corrupt" / "3").is_dir()


# the run a SIGKILL interrupts: hangs inside the save of step 4 (after the arrays are written, before
# the atomic rename that commits the step), so the kill lands mid-save every time
KILLED_RUN = textwrap.dedent("""
    import pathlib, sys, time
    from orbax.checkpoint._src.path import atomicity
    out, marker = sys.argv[1], pathlib.Path(sys.argv[2])
    commit = atomicity.AtomicRenameTemporaryPath.finalize
    async def hang_before_committing_step_4(self):
        if self.get_final().name == "4":
            marker.write_text("saving step 4")
            time.sleep(600)
        return await commit(self)
    atomicity.AtomicRenameTemporaryPath.finalize = hang_before_committing_step_4
    from genrank_jax.model.config import GenRankConfig
    from genrank_jax.data.synthetic import SimulatorConfig, simulate
    from genrank_jax.training import TrainConfig, Trainer
    dataset = simulate(SimulatorConfig.preset("tests")).dataset
    train = TrainConfig(steps=6, checkpoint_every=2, **{train})
    Trainer(GenRankConfig.preset("tiny", dataset.spec), train, dataset, output_dir=out).fit()
""")


def test_kill_during_save_resumes_exactly(dataset, trained_run, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "marker"
    script = KILLED_RUN.replace("{train}", repr(TRAIN))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    process = subprocess.Popen([sys.executable, "-c", script, str(out), str(marker)], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not marker.exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended before step 4's save: {process.stdout.read().decode()[-3000:]}")
        assert time.monotonic() < deadline, "the run never reached step 4's save"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    checkpoints = out / "checkpoints"
    assert any(".orbax-checkpoint-tmp" in p.name for p in checkpoints.iterdir())  # killed mid-save indeed

    resumed = make_trainer(dataset, out)
    assert resumed.resume() == 2  # the half-written step 4 is not a checkpoint
    losses = [h["loss"] for h in resumed.fit()]
    np.testing.assert_allclose(losses, trained_run[1], rtol=1e-6)  # equals the uninterrupted run
    assert resumed.checkpoints.all_steps() == [2, 4, 6]


def test_export_reads_only_verified_checkpoints(run_folder):
    from genrank_jax.serving.export import load_checkpoint_model

    _, step = load_checkpoint_model(run_folder / "checkpoints")
    assert step == 6
    # arrays that read back fine but differ from what was saved: the checksum catches them
    meta_file = run_folder / "checkpoints" / "6" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    name = sorted(meta["checksums"])[0]
    meta["checksums"][name] = "0" * 64
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CorruptCheckpointError,
                       match=f"step 6 .*corrupt: 1 array\\(s\\) fail their checksum, e.g. {name}"):
        load_checkpoint_model(run_folder / "checkpoints")
    overwrite_4kb(largest_array_file(run_folder / "checkpoints" / "4"))  # unreadable arrays
    with pytest.raises(CheckpointError, match="step 4 .*corrupt"):
        load_checkpoint_model(run_folder / "checkpoints", step=4)
