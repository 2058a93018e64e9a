"""Training: learning, resume equals uninterrupted, checkpoint errors, NaN guard, bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genrank_jax.data.synthetic import SimulatorConfig, simulate
from genrank_jax.model.config import GenRankConfig
from genrank_jax.model.validation import BatchError, validate_batch
from genrank_jax.training import NonFiniteLossError, TrainConfig, Trainer
from genrank_jax.training.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def dataset():
    return simulate(SimulatorConfig.preset("tests")).dataset


def make_trainer(dataset, output_dir=None, steps=6, checkpoint_every=0, **config_overrides):
    config = GenRankConfig.preset("tiny", dataset.spec, **config_overrides)
    train = TrainConfig(steps=steps, batch_size=16, max_history=24, warmup_steps=2,
                        checkpoint_every=checkpoint_every, keep_checkpoints=2)
    return Trainer(config, train, dataset, output_dir=output_dir)


def test_training_learns(dataset):
    trainer = make_trainer(dataset, steps=60)
    before = trainer.evaluate()["click"]["auc"]
    history = trainer.fit()
    after = trainer.evaluate()["click"]["auc"]
    first, last = np.mean([h["loss"] for h in history[:5]]), np.mean([h["loss"] for h in history[-5:]])
    assert last < 0.8 * first
    assert after > before + 0.05 and after > 0.6


def test_resumed_run_continues_the_same_loss_curve(dataset, tmp_path):
    uninterrupted = make_trainer(dataset, steps=8)
    want = [h["loss"] for h in uninterrupted.fit()]

    first = make_trainer(dataset, tmp_path, steps=8, checkpoint_every=4)
    first.fit(steps=5)  # checkpoint at step 4, then one more step that is lost
    resumed = make_trainer(dataset, tmp_path, steps=8, checkpoint_every=4)
    assert resumed.resume() == 4
    got = [h["loss"] for h in resumed.fit()]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert sorted(resumed.checkpoints.manager.all_steps()) == [4, 8]  # keep_checkpoints=2

    # evaluation from the checkpoint equals evaluation at the end of training
    reloaded = make_trainer(dataset, tmp_path, steps=8, checkpoint_every=4)
    reloaded.resume()
    assert reloaded.evaluate()["click"]["auc"] == resumed.evaluate()["click"]["auc"]


def test_mismatched_checkpoint_names_the_field(dataset, tmp_path):
    make_trainer(dataset, tmp_path, steps=2, checkpoint_every=2).fit()
    other = make_trainer(dataset, tmp_path, steps=4, checkpoint_every=2, width=48)
    with pytest.raises(CheckpointError, match="width"):
        other.resume()


def test_corrupt_checkpoint_is_reported(dataset, tmp_path):
    make_trainer(dataset, tmp_path, steps=2, checkpoint_every=2).fit()
    step_dir = tmp_path / "checkpoints" / "2"
    damaged = 0
    for path in sorted(step_dir.rglob("*")):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(b"\x00garbage" * 3)
            damaged += 1
    assert damaged
    with pytest.raises(CheckpointError, match="corrupt"):
        make_trainer(dataset, tmp_path, steps=4, checkpoint_every=2).resume()


def poison(trainer):
    """Make the trainer's current (unsaved) state NaN, as a diverged step would."""
    pure = nnx.to_pure_dict(trainer.state)
    pure = jax.tree.map(lambda x: x * np.nan if jnp.issubdtype(x.dtype, jnp.floating) else x, pure)
    nnx.replace_by_pure_dict(trainer.state, pure)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(dataset, tmp_path):
    trainer = make_trainer(dataset, tmp_path, steps=8, checkpoint_every=2)
    trainer.fit(steps=4)
    poison(trainer)
    with pytest.raises(NonFiniteLossError, match=r"step 5.*checkpoint is step 4"):
        trainer.fit()
    assert trainer.step == 4
    assert trainer.checkpoints.latest_step() == 4
    state_dir = tmp_path / "checkpoints" / "4"
    assert state_dir.is_dir()


def test_validate_batch_names_the_problem(dataset):
    trainer = make_trainer(dataset)
    batch, _, _ = next(iter(trainer._batches_from(0)))  # (batch, exposures, padding)
    validate_batch(batch, trainer.config)
    items = np.array(batch.item_ids)
    items[0, 0] = dataset.spec.num_items + 3
    with pytest.raises(BatchError, match="outside the vocabulary"):
        validate_batch(dataclasses.replace(batch, item_ids=items), trainer.config)
    with pytest.raises(BatchError, match="actions must have shape"):
        validate_batch(dataclasses.replace(batch, actions=batch.actions[..., :2]), trainer.config)
    with pytest.raises(BatchError, match="dtype"):
        validate_batch(dataclasses.replace(batch, item_ids=batch.item_ids.astype(np.float32)), trainer.config)
    candidates = np.array(batch.num_candidates)
    candidates[1] = 0
    with pytest.raises(BatchError, match="zero candidates"):
        validate_batch(dataclasses.replace(batch, num_candidates=candidates), trainer.config)
    kinds = np.array(batch.kinds)
    kinds[2, kinds[2] == 1] = 0  # row 2 loses its history tokens
    with pytest.raises(BatchError, match="empty history"):
        validate_batch(dataclasses.replace(batch, kinds=kinds), trainer.config)


def test_config_must_match_the_dataset(dataset):
    other = dataclasses.replace(dataset.spec, num_items=dataset.spec.num_items + 1)
    with pytest.raises(ValueError, match="do not match"):
        Trainer(GenRankConfig.preset("tiny", other), TrainConfig(steps=1), dataset)
