"""The features baseline (a logistic regression on aggregate features of earlier requests) and
GenRank reading the same aggregates: batches carry them, models learn from them, nothing leaks."""

import numpy as np
import pytest

from genrank_jax.data.aggregates import aggregate_features, num_aggregates
from genrank_jax.data.samples import SampleBuilder, SampleLayout
from genrank_jax.data.synthetic import SimulatorConfig, simulate
from genrank_jax.model.config import GenRankConfig
from genrank_jax.model.validation import BatchError, validate_batch
from genrank_jax.training import TrainConfig, Trainer


@pytest.fixture(scope="module")
def dataset():
    return simulate(SimulatorConfig.preset("tests", seed=1)).dataset


def test_batches_carry_each_tokens_aggregates(dataset):
    builder = SampleBuilder(dataset, SampleLayout(max_history=24, max_candidates=16, aggregates=True))
    table = aggregate_features(dataset)
    requests = np.asarray(dataset.eval_requests[:5])
    batch = builder.build(requests, seq_len=64, batch_size=8)
    assert batch.aggregates.shape == (8, 64, num_aggregates(dataset.spec))
    log = dataset.interactions
    for b, request in enumerate(requests):  # candidates: the request's rows, in order
        rows = np.arange(log.request_starts[request], log.request_starts[request + 1])[:16]
        first = int(batch.lengths[b] - batch.num_candidates[b])
        np.testing.assert_array_equal(batch.aggregates[b, first:first + len(rows)], table[rows])
    assert not batch.aggregates[5:].any()  # padding rows
    assert not batch.aggregates[0, int(batch.lengths[0]):].any()  # padding tokens
    plain = SampleBuilder(dataset, SampleLayout(max_history=24, max_candidates=16)).build(requests, 64, 8)
    assert plain.aggregates is None


def test_a_model_that_reads_aggregates_refuses_batches_without_them(dataset):
    config = GenRankConfig.preset("tiny", dataset.spec, architecture="features")
    batch = SampleBuilder(dataset, SampleLayout(max_history=24, max_candidates=16)).build(
        np.asarray(dataset.train_requests[5:9]), 64, 4)
    with pytest.raises(BatchError, match="aggregate features"):
        validate_batch(batch, config)


@pytest.mark.parametrize("hidden", [0, 16])
def test_features_ranker_learns(dataset, hidden):
    train = TrainConfig(steps=150, batch_size=32, max_history=24, learning_rate=1e-2)
    config = GenRankConfig.preset("tiny", dataset.spec, architecture="features", features_hidden=hidden)
    trainer = Trainer(config, train, dataset)
    before = trainer.evaluate()
    trainer.fit()
    after = trainer.evaluate()
    click = dataset.spec.action_names[0]
    assert after[click]["auc"] > 0.6 and after[click]["auc"] > before[click]["auc"] + 0.02, (before, after)
    assert after[click]["logloss"] < before[click]["logloss"]


def test_genrank_with_aggregates_starts_as_genrank_and_trains(dataset):
    """The wide path starts at zero, the token projection adds to the embedding: a finite, learning model."""
    train = TrainConfig(steps=60, batch_size=32, max_history=24)
    config = GenRankConfig.preset("tiny", dataset.spec, use_aggregates=True)
    trainer = Trainer(config, train, dataset)
    assert trainer.layout.aggregates and not np.asarray(trainer.model.wide.kernel[...]).any()
    history = trainer.fit()
    assert np.isfinite([h["loss"] for h in history]).all()
    assert np.mean([h["loss"] for h in history[-10:]]) < np.mean([h["loss"] for h in history[:10]])
    assert np.asarray(trainer.model.wide.kernel[...]).any()  # the wide path learned


def test_export_refuses_a_genrank_that_reads_aggregates(dataset, tmp_path):
    from flax import nnx

    from genrank_jax.errors import GenRankError
    from genrank_jax.model import GenRank
    from genrank_jax.serving.export import export_scorer

    model = GenRank(GenRankConfig.preset("tiny", dataset.spec, use_aggregates=True), rngs=nnx.Rngs(0))
    with pytest.raises(GenRankError, match="aggregate features"):
        export_scorer(model, tmp_path / "export")
    assert not (tmp_path / "export").exists()
