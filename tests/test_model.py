"""GenRank and the baselines: shapes, the attention mask seen end to end, loss, a learning step."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genrank_jax.data.samples import SampleBuilder, SampleLayout
from genrank_jax.data.synthetic import SimulatorConfig, simulate
from genrank_jax.model import GenRank, attend_over
from genrank_jax.model.baselines import DINRanker, build_model
from genrank_jax.model.config import GenRankConfig
from genrank_jax.model.losses import candidate_bce
from genrank_jax.training import usable_requests

VARIANTS = [
    ("genrank", "action", "transformer"),
    ("genrank", "action", "hstu"),
    ("genrank", "item", "transformer"),
    ("genrank", "item", "hstu"),
    ("din", "action", "transformer"),
]
MASKED_VARIANTS = VARIANTS + [("logistic", "action", "transformer")]


@pytest.fixture(scope="module")
def feed():
    return simulate(SimulatorConfig.preset("tests"))


def make_batch(dataset, organization, count=6, max_history=20, seed=0):
    builder = SampleBuilder(dataset, SampleLayout(max_history=max_history, organization=organization))
    rng = np.random.default_rng(seed)
    requests = rng.choice(usable_requests(builder, dataset.train_requests, 1), count, replace=False)
    seq_len = int(builder.token_counts(requests).max()) + 3  # some padding on every row
    return builder.build(requests, seq_len)


def make_model(dataset, architecture, organization, block, seed=0, **overrides):
    config = GenRankConfig.preset("tiny", dataset.spec, architecture=architecture, organization=organization,
                                  block=block, **overrides)
    return build_model(config, rngs=nnx.Rngs(seed))


@pytest.mark.parametrize("architecture,organization,block", VARIANTS)
def test_logits_shape_and_finite(feed, architecture, organization, block):
    batch = make_batch(feed.dataset, organization)
    logits = make_model(feed.dataset, architecture, organization, block)(batch)
    assert logits.shape == batch.labels.shape
    assert np.isfinite(np.asarray(logits)).all()
    if organization == "item":  # 2N + M tokens
        history = (batch.kinds == 2).sum(1)
        assert ((batch.kinds == 3).sum(1) == history).all()
        assert (batch.lengths == 2 * history + batch.num_candidates).all()


@pytest.mark.parametrize("architecture,organization,block", MASKED_VARIANTS)
def test_a_candidate_never_sees_another_candidate(feed, architecture, organization, block):
    """Changing one candidate's item moves its own logits and no other candidate's."""
    batch = make_batch(feed.dataset, organization, seed=1)
    model = make_model(feed.dataset, architecture, organization, block)
    before = np.asarray(model(batch))
    row = int(np.argmax(batch.num_candidates))
    first = int(batch.candidate_index[row, 0])
    item_ids = np.array(batch.item_ids)
    item_ids[row, first] = (item_ids[row, first] + 17) % feed.dataset.spec.num_items
    side = np.array(batch.side)
    side[row, first] = feed.dataset.catalog.side_features[item_ids[row, first]]
    after = np.asarray(model(dataclasses.replace(batch, item_ids=item_ids, side=side)))
    candidates = batch.candidate_index[row, :batch.num_candidates[row]]
    assert np.abs(after[row, first] - before[row, first]).max() > 1e-6
    others = candidates[1:]
    np.testing.assert_allclose(after[row, others], before[row, others], atol=1e-6)
    # other samples of the batch are untouched
    np.testing.assert_allclose(np.delete(after, row, 0), np.delete(before, row, 0), atol=1e-6)


@pytest.mark.parametrize("block", ["transformer", "hstu"])
def test_history_is_causal(feed, block):
    """A history token's output depends on earlier tokens only (checked through the hidden states)."""
    batch = make_batch(feed.dataset, "action", seed=2)
    config = GenRankConfig.preset("tiny", feed.dataset.spec, block=block)
    model = GenRank(config, rngs=nnx.Rngs(0))

    def hidden(batch):
        return np.asarray(model.forward(batch, attend_over(batch)).hidden)

    row = 0
    history = int(batch.lengths[row] - batch.num_candidates[row])
    assert history >= 3
    cut = history // 2
    item_ids = np.array(batch.item_ids)
    item_ids[row, cut] = (item_ids[row, cut] + 5) % feed.dataset.spec.num_items
    before, after = hidden(batch), hidden(dataclasses.replace(batch, item_ids=item_ids))
    np.testing.assert_allclose(after[row, :cut], before[row, :cut], atol=1e-6)
    assert np.abs(after[row, cut:history] - before[row, cut:history]).max() > 1e-6


def test_loss_is_taken_at_candidates_only(feed):
    batch = make_batch(feed.dataset, "action", seed=3)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=batch.labels.shape).astype(np.float32)
    weights = (1.0, 2.0, 0.5, 3.0)
    loss, per_task = candidate_bce(jnp.asarray(logits), batch, weights)
    mask = batch.candidate_mask()
    p = 1 / (1 + np.exp(-logits[mask]))
    y = batch.labels[mask]
    want_per_task = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(0)
    np.testing.assert_allclose(np.asarray(per_task), want_per_task, rtol=1e-5)
    np.testing.assert_allclose(float(loss), float(np.dot(want_per_task, weights)), rtol=1e-5)
    # garbage logits on history and padding tokens change nothing
    noisy = np.where(mask[..., None], logits, 1e3 * rng.normal(size=logits.shape)).astype(np.float32)
    np.testing.assert_allclose(float(candidate_bce(jnp.asarray(noisy), batch, weights)[0]), float(loss), rtol=1e-6)


def test_din_rejects_item_oriented_batches(feed):
    config = GenRankConfig.preset("tiny", feed.dataset.spec, architecture="din", organization="item")
    with pytest.raises(ValueError, match="action-oriented"):
        DINRanker(config, rngs=nnx.Rngs(0))


def test_content_embedding_reaches_the_output(feed):
    batch = make_batch(feed.dataset, "action", seed=4)
    model = make_model(feed.dataset, "genrank", "action", "transformer")
    shifted = dataclasses.replace(batch, content=batch.content + 1.0)
    assert np.abs(np.asarray(model(shifted)) - np.asarray(model(batch))).max() > 1e-5


def test_presets_and_config_round_trip(feed):
    paper = GenRankConfig.preset("paper", feed.dataset.spec)
    assert (paper.num_blocks, paper.num_heads, paper.width, paper.max_tokens) == (3, 8, 768, 480)
    assert GenRankConfig.from_json(paper.to_json()) == paper
    with pytest.raises(ValueError, match="preset"):
        GenRankConfig.preset("huge", feed.dataset.spec)
    with pytest.raises(ValueError, match="multiple of num_heads"):
        GenRankConfig.preset("tiny", feed.dataset.spec, width=30, num_heads=4)
