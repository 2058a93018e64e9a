"""Validation slice and early stopping: the slice is the latest train, never eval; an overfitting run stops
and ends in its best state; the small-data defaults rule."""

import dataclasses

import numpy as np
import pytest

from genrank_jax.data.holdout import validation_dataset, validation_slice
from genrank_jax.data.synthetic import SimulatorConfig, simulate
from genrank_jax.model.config import GenRankConfig
from genrank_jax.training import TrainConfig, Trainer, defaults
from genrank_jax.training.defaults import LARGE_DATA, SMALL_DATA, defaults_for, train_exposures


@pytest.fixture(scope="module")
def dataset():
    return simulate(SimulatorConfig.preset("tests")).dataset


def last_request_split(dataset):
    """The same log split the other way: each user's last request is eval (as loading.py's last_request)."""
    users = dataset.interactions.request_users()
    last = np.append(users[1:] != users[:-1], True)
    requests = np.arange(len(users), dtype=np.int64)
    return dataclasses.replace(dataset, train_requests=requests[~last], eval_requests=requests[last])


@pytest.mark.parametrize("split", ["temporal", "last_request"])
@pytest.mark.parametrize("fraction", [0.1, 0.15, 0.3])
def test_validation_slice_is_the_latest_train_and_never_eval(dataset, split, fraction):
    data = dataset if split == "temporal" else last_request_split(dataset)
    fit, held = validation_slice(data, fraction)
    times = data.interactions.request_times()
    assert not set(held) & set(data.eval_requests) and not set(fit) & set(data.eval_requests)
    assert not set(fit) & set(held)
    assert sorted(np.concatenate([fit, held])) == sorted(data.train_requests)
    assert times[fit].max() < times[held].min()  # every fitted request is strictly earlier
    assert abs(len(held) / len(data.train_requests) - fraction) < 0.02
    carved = validation_dataset(data, fraction)
    np.testing.assert_array_equal(carved.train_requests, fit)
    np.testing.assert_array_equal(carved.eval_requests, held)


def test_validation_slice_rejects_what_it_cannot_carve(dataset):
    with pytest.raises(ValueError, match="fraction"):
        validation_slice(dataset, 0.0)
    with pytest.raises(ValueError, match="empty"):
        validation_slice(dataclasses.replace(dataset, train_requests=dataset.train_requests[:0]))
    one_time = dataclasses.replace(dataset, train_requests=dataset.train_requests[:1])
    with pytest.raises(ValueError, match="nothing left to fit"):
        validation_slice(one_time)
    with pytest.raises(ValueError, match="needs a validation slice"):
        TrainConfig(patience=2)


def overfitting_trainer(dataset, output_dir=None, **overrides):
    """A tiny GenRank on 240 train requests at a high constant learning rate: it memorizes within epochs."""
    small = dataclasses.replace(dataset, train_requests=dataset.train_requests[-240:])
    settings = dict(epochs=40, batch_size=32, max_history=12, max_candidates=8, warmup_steps=2, learning_rate=1e-2,
                    lr_schedule="constant", validation_fraction=0.25, patience=3)
    return Trainer(GenRankConfig.preset("tiny", dataset.spec), TrainConfig(**{**settings, **overrides}), small,
                   output_dir=output_dir)


def test_overfitting_run_stops_and_ends_in_its_best_state(dataset):
    trainer = overfitting_trainer(dataset)
    assert not set(trainer.validation_requests) & set(trainer.eval_requests)
    assert not set(trainer.validation_requests) & set(trainer.train_requests)
    trainer.fit()
    curve, best = trainer.validation_curve, trainer.best
    epoch = trainer.batches_per_epoch
    assert [entry["step"] for entry in curve] == list(range(epoch, trainer.step + 1, epoch))  # every epoch
    # it stopped: `patience` evaluations after the best, long before the 40 epochs it was allowed
    assert trainer.stopped_early and trainer.step < trainer.train_config.steps
    assert trainer.step == best["step"] + 3 * epoch
    assert all(entry["auc"] <= best["auc"] for entry in curve)
    # overfitting: training loss still falls after the best epoch while validation AUC does not rise
    assert curve[-1]["train_loss"] < best["train_loss"] and curve[-1]["auc"] < best["auc"]
    # the trainer holds the best state, not the last one: scoring the slice again gives the best's AUC
    assert trainer.score_validation()["click"]["auc"] == best["auc"]


def test_defaults_rule_follows_the_size_of_the_train_split(dataset, monkeypatch):
    starts = dataset.interactions.request_starts
    assert train_exposures(dataset) == sum(int(starts[r + 1] - starts[r]) for r in dataset.train_requests)
    assert defaults_for(dataset) is SMALL_DATA  # 24k train exposures: ml-100k-sized
    monkeypatch.setattr(defaults, "SMALL_DATA_EXPOSURES", train_exposures(dataset))  # the threshold is exclusive
    assert defaults_for(dataset) is LARGE_DATA
    assert SMALL_DATA.epochs and SMALL_DATA.patience and SMALL_DATA.validation_fraction


def test_best_state_is_kept_by_orbax_and_a_resumed_run_keeps_it(dataset, tmp_path):
    trainer = overfitting_trainer(dataset, output_dir=tmp_path)
    trainer.fit()
    best, epoch, curve = trainer.best, trainer.batches_per_epoch, list(trainer.validation_curve)
    assert trainer.stopped_early and trainer.step == best["step"] + 3 * epoch
    manager = trainer.checkpoints.manager
    # orbax keeps the best evaluation (best_fn over the saved validation AUC) and the latest steps
    assert manager.best_step() == best["step"]
    assert best["step"] in manager.all_steps() and trainer.step in manager.all_steps()
    assert set(manager.all_steps()) == {best["step"]} | {entry["step"] for entry in curve[-3:]}  # the rest deleted
    assert trainer.score_validation()["click"]["auc"] == best["auc"]  # fit ended in the best checkpoint's state

    resumed = overfitting_trainer(dataset, output_dir=tmp_path)
    assert resumed.resume() == trainer.step  # the latest checkpoint: after the best
    assert resumed.best == best and resumed.validation_curve == curve
    assert resumed.stopped_early
    resumed.fit()  # nothing left to train: it only restores the best state
    assert resumed.step == trainer.step and resumed.score_validation()["click"]["auc"] == best["auc"]


def test_resume_with_setting_changes_restores_its_best_at_the_end(dataset, tmp_path):
    """--resume --allow-setting-changes (to train longer) must finish: restoring the best
    checkpoint at the end accepts the saved run's other settings too (issue 21)."""
    first = overfitting_trainer(dataset, output_dir=tmp_path)
    first.fit()
    assert first.stopped_early
    # another learning rate: a setting a resume must accept explicitly; the best checkpoint to
    # restore at the end is one the first run saved under its own settings
    changed = overfitting_trainer(dataset, output_dir=tmp_path, learning_rate=3e-2)
    assert changed.resume(allow_setting_changes=True) == first.step
    changed.fit()  # raised SettingsMismatchError restoring the best state before the fix
    assert changed.best == first.best
    assert changed.score_validation()["click"]["auc"] == first.best["auc"]


def test_refit_trains_on_all_of_train_for_the_best_epoch_count(tmp_path):
    from genrank_jax.data.synthetic import SimulatorConfig, simulate
    from genrank_jax.training import refit

    dataset = simulate(SimulatorConfig.preset("tests", seed=5)).dataset
    config = GenRankConfig.preset("tiny", dataset.spec)
    train = TrainConfig(epochs=2, batch_size=64, max_history=24, validation_fraction=0.25, patience=2)
    trainer = Trainer(config, train, dataset)
    trainer.fit()
    again = refit(trainer, tmp_path / "refit")
    assert again.validation_requests is None
    assert len(again.train_requests) > len(trainer.train_requests)  # the slice is learnt from too
    np.testing.assert_array_equal(np.sort(again.train_requests),
                                  np.sort(np.concatenate([trainer.train_requests, trainer.validation_requests])))
    assert again.step == round(trainer.best["epoch"] * again.batches_per_epoch)
    assert again.checkpoints.latest_step() == again.step  # saved, so it can be exported
    results = again.evaluate()
    assert results[dataset.spec.action_names[0]]["auc"] > 0.55
