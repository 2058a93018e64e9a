"""The stream schedule: the log once in time order, every exposure scored before it is trained on,
and a resumed stream equal to an uninterrupted one."""


import numpy as np
import pytest
from flax import nnx

from genrank_jax.data.synthetic import SimulatorConfig, simulate
from genrank_jax.model.config import GenRankConfig
from genrank_jax.training import TrainConfig, Trainer
from genrank_jax.training.streaming import Window, parse_window, weighted_mean, window_ids


@pytest.fixture(scope="module")
def dataset():
    return simulate(SimulatorConfig.preset("tests", seed=2)).dataset


def stream_config(**overrides):
    return TrainConfig(**{**dict(schedule="stream", window="3000", batch_size=32, max_history=24), **overrides})


def test_parse_window():
    assert parse_window("1d") == Window(seconds=86400) and parse_window("6h") == Window(seconds=21600)
    assert parse_window("30m") == Window(seconds=1800) and parse_window("2.5s") == Window(seconds=2.5)
    assert parse_window("100000") == Window(exposures=100000)
    for bad in ("0", "0d", "1w", "-3h", "h", ""):
        with pytest.raises(ValueError, match="window"):
            parse_window(bad)


def test_stream_settings_that_cannot_apply_are_refused():
    with pytest.raises(ValueError, match="epochs and a validation slice do not apply"):
        TrainConfig(schedule="stream", epochs=3)
    with pytest.raises(ValueError, match="validation slice"):
        TrainConfig(schedule="stream", validation_fraction=0.1)
    with pytest.raises(ValueError, match="1week"):
        TrainConfig(schedule="stream", window="1week")


def test_windows_follow_time_and_size(dataset):
    log = dataset.interactions
    order = np.argsort(log.request_times(), kind="stable")
    by_size = window_ids(dataset, order, Window(exposures=1000))
    sizes = np.bincount(by_size, weights=np.diff(log.request_starts)[order])
    assert (np.diff(by_size) >= 0).all() and (sizes[:-1] >= 1000).all()
    # a window closes at the first request that starts past its budget: less than one request over it
    assert (sizes[:-1] < 1000 + np.diff(log.request_starts).max()).all()
    by_day = window_ids(dataset, order, Window(seconds=86400))
    times = log.request_times()[order]
    for w in range(by_day.max() + 1):
        span = times[by_day == w]
        assert span.max() - span.min() < 86400


def test_every_exposure_is_scored_once_before_it_is_trained_on(dataset):
    trainer = Trainer(GenRankConfig.preset("tiny", dataset.spec), stream_config(), dataset)
    trainer.fit()
    assert trainer.step == trainer.train_config.steps == trainer.stream_offsets[-1]
    curve = trainer.stream_curve
    assert [entry["window"] for entry in curve] == list(range(len(trainer.stream_windows)))
    # scored by the state that had trained on exactly the windows before it
    assert [entry["step"] for entry in curve] == list(trainer.stream_offsets[:-1])
    times = dataset.interactions.request_times()
    for earlier, later in zip(curve, curve[1:]):
        assert earlier["end_time"] <= later["start_time"]
    requests = np.concatenate(trainer.stream_windows)
    assert len(np.unique(requests)) == len(requests)
    starts = dataset.interactions.request_starts
    candidates = np.minimum(starts[requests + 1] - starts[requests], trainer.train_config.max_candidates).sum()
    assert sum(entry["exposures"] for entry in curve) == candidates
    # the stream reads the eval period too, after the warm-up windows of the train period
    first_eval = times[dataset.eval_requests].min()
    warmup = trainer.stream_warmup
    assert 0 < warmup < len(curve) and [entry["warmup"] for entry in curve] == [w < warmup for w in range(len(curve))]
    assert all(entry["end_time"] < first_eval for entry in curve[:warmup])
    assert (curve[warmup]["end_time"] >= first_eval
            and all(entry["start_time"] >= first_eval for entry in curve[warmup + 1:]))
    summary = trainer.stream_summary()
    click = dataset.spec.action_names[0]
    assert 0.5 < summary["after_warmup"][click]["auc"] <= 1.0
    # the model learns along the stream: later windows score better than the first
    assert curve[-2]["tasks"][click]["auc"] > curve[0]["tasks"][click]["auc"]


def test_a_resumed_stream_equals_an_uninterrupted_one(dataset, tmp_path):
    config = GenRankConfig.preset("tiny", dataset.spec)
    whole = Trainer(config, stream_config(), dataset)
    whole.fit()
    train = stream_config(checkpoint_every=5)
    first = Trainer(config, train, dataset, output_dir=tmp_path)
    stop = int(first.stream_offsets[2]) + 3  # inside window 2, after its scoring
    first.fit(steps=stop)
    assert first.step == stop and len(first.stream_curve) == 3
    second = Trainer(config, train, dataset, output_dir=tmp_path)
    assert second.resume() == stop // 5 * 5  # the newest checkpoint
    second.fit()
    assert second.step == whole.step
    for a, b in zip(whole.stream_curve, second.stream_curve):
        assert a["window"] == b["window"] and a["exposures"] == b["exposures"]
        for task, row in a["tasks"].items():
            np.testing.assert_allclose(row["auc"], b["tasks"][task]["auc"], rtol=1e-5)
    for a, b in zip(nnx.to_flat_state(nnx.state(whole.model)), nnx.to_flat_state(nnx.state(second.model))):
        np.testing.assert_allclose(np.asarray(a[1][...]), np.asarray(b[1][...]), rtol=1e-4, atol=1e-6)


def test_weighted_mean_leaves_out_undefined_windows():
    windows = [{"exposures": 10, "tasks": {"t": {"auc": 0.6}}}, {"exposures": 30, "tasks": {"t": {"auc": 0.8}}},
               {"exposures": 5, "tasks": {"t": {"auc": float("nan")}}}]
    assert weighted_mean(windows, "t") == pytest.approx(0.75)
    assert weighted_mean(windows, "t", skip=1) == pytest.approx(0.8)
