"""The paper's two ablations (genrank_jax.model.history_variants): a fully visible history and loss at
history positions. Each is checked against what it claims: the explicit-mask attention equals the
op's reference under the op's mask, a shadow token never sees its own or later actions, the
candidates' outputs are the same with and without shadows, and the loss adds exactly the history's."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from genrank_jax.data.samples import SampleBuilder, SampleLayout
from genrank_jax.data.synthetic import SimulatorConfig, simulate
from genrank_jax.data.tokens import TokenKind
from genrank_jax.kernels.masking import valid_pairs
from genrank_jax.kernels.reference import attention_reference
from genrank_jax.model import GenRank, attend_over
from genrank_jax.model.config import GenRankConfig
from genrank_jax.model.history_variants import ExplicitMask, explicit_mask, masked_attention, sequence_visibility
from genrank_jax.model.losses import candidate_and_history_bce, candidate_bce
from genrank_jax.serving import ServingError, split_batch
from genrank_jax.training import TrainConfig, Trainer, usable_requests


@pytest.fixture(scope="module")
def feed():
    return simulate(SimulatorConfig.preset("tests"))


def make_batch(dataset, count=6, max_history=20, seed=0):
    builder = SampleBuilder(dataset, SampleLayout(max_history=max_history, organization="action"))
    rng = np.random.default_rng(seed)
    requests = rng.choice(usable_requests(builder, dataset.train_requests, 4), count, replace=False)
    seq_len = int(builder.token_counts(requests).max()) + 3  # some padding on every row
    return builder.build(requests, seq_len)


def make_model(dataset, seed=0, **overrides):
    return GenRank(GenRankConfig.preset("tiny", dataset.spec, **overrides), rngs=nnx.Rngs(seed))


def test_the_causal_visibility_is_the_ops_mask():
    rng = np.random.default_rng(0)
    seq_len = 11
    lengths = jnp.asarray(rng.integers(0, seq_len + 1, 7), jnp.int32)
    num_candidates = jnp.asarray([rng.integers(0, int(n) + 1) for n in lengths], jnp.int32)
    ours = sequence_visibility(lengths, num_candidates, seq_len, full_history=False)
    index = np.arange(seq_len)
    for b in range(7):
        want = valid_pairs(index[:, None], index[None, :], lengths[b], num_candidates[b])
        np.testing.assert_array_equal(np.asarray(ours[b]), np.asarray(want))
    full = np.asarray(sequence_visibility(lengths, num_candidates, seq_len, full_history=True))
    for b in range(7):
        history = int(lengths[b] - num_candidates[b])
        assert full[b, :history, :history].all()  # every history pair, later keys too
        np.testing.assert_array_equal(full[b, history:], np.asarray(ours[b, history:]))  # candidates unchanged


@pytest.mark.parametrize("kind", ["softmax", "silu"])
def test_masked_attention_equals_the_reference_under_the_ops_mask(kind):
    rng = np.random.default_rng(1)
    batch, seq_len, heads, dim = 4, 13, 2, 8
    q, k, v = (jnp.asarray(rng.normal(size=(batch, seq_len, heads, dim)), jnp.float32) for _ in range(3))
    lengths = jnp.asarray([13, 9, 1, 0], jnp.int32)
    num_candidates = jnp.asarray([4, 3, 1, 0], jnp.int32)
    positions = jnp.asarray(rng.integers(0, 20, (batch, seq_len)), jnp.int32)
    timestamps = jnp.asarray(-rng.uniform(0, 1e5, (batch, seq_len)), jnp.float32)
    # poison the padding: it must not reach a valid output
    pad = np.arange(seq_len)[None, :] >= np.asarray(lengths)[:, None]
    q, k, v = (jnp.where(pad[:, :, None, None], jnp.nan, x) for x in (q, k, v))
    timestamps = jnp.where(pad, jnp.inf, timestamps)
    slopes = jnp.asarray([0.5, 0.125], jnp.float32), jnp.asarray([0.1, 0.02], jnp.float32)
    mask = ExplicitMask(visible=sequence_visibility(lengths, num_candidates, seq_len, full_history=False),
                        positions=positions, timestamps=timestamps, normalizer=lengths)

    def ours(q, k, v):
        return masked_attention(q, k, v, mask, alibi_slopes=slopes[0], time_slopes=slopes[1], kind=kind)

    def reference(q, k, v):
        return attention_reference(q, k, v, lengths=lengths, num_candidates=num_candidates, positions=positions,
                                   timestamps=timestamps, alibi_slopes=slopes[0], time_slopes=slopes[1], kind=kind,
                                   scale=dim ** -0.5)

    got, ours_vjp = jax.vjp(ours, q, k, v)
    want, reference_vjp = jax.vjp(reference, q, k, v)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    cotangent = jnp.asarray(rng.normal(size=got.shape), jnp.float32)
    for mine, theirs in zip(ours_vjp(cotangent), reference_vjp(cotangent)):
        assert np.isfinite(np.asarray(mine)).all()
        np.testing.assert_allclose(np.asarray(mine), np.asarray(theirs), atol=2e-5)


def test_a_fully_visible_history_changes_candidates_only_from_the_second_block(feed):
    batch = make_batch(feed.dataset)
    one_causal, one_full = make_model(feed.dataset), make_model(feed.dataset, history_mask="full")
    candidates = np.asarray(batch.candidate_mask())
    # one block: candidates read the history's inputs, which no mask touches
    np.testing.assert_allclose(np.asarray(one_full(batch))[candidates], np.asarray(one_causal(batch))[candidates],
                               atol=1e-5)
    two_causal = make_model(feed.dataset, num_blocks=2)
    two_full = make_model(feed.dataset, num_blocks=2, history_mask="full")
    assert np.abs(np.asarray(two_full(batch))[candidates] - np.asarray(two_causal(batch))[candidates]).max() > 1e-4
    # and a history token's output now depends on a later history token
    def hidden(model, batch):
        full = model.config.history_mask == "full"
        mask = explicit_mask(batch, full_history=True, shadows=False) if full else None
        return np.asarray(model.forward(batch, attend_over(batch, mask)).hidden)
    row, history = 0, int(batch.lengths[0] - batch.num_candidates[0])
    item_ids = np.array(batch.item_ids)
    item_ids[row, history - 1] = (item_ids[row, history - 1] + 5) % feed.dataset.spec.num_items
    moved = dataclasses.replace(batch, item_ids=item_ids)
    assert np.abs(hidden(one_full, moved)[row, 0] - hidden(one_full, batch)[row, 0]).max() > 1e-6
    np.testing.assert_allclose(hidden(one_causal, moved)[row, 0], hidden(one_causal, batch)[row, 0], atol=1e-6)


@pytest.mark.parametrize("num_blocks,block", [(1, "transformer"), (2, "transformer"), (2, "hstu")])
def test_shadows_see_the_history_before_them_only(feed, num_blocks, block):
    batch = make_batch(feed.dataset, seed=3)
    model = make_model(feed.dataset, num_blocks=num_blocks, block=block, history_loss=True)
    logits, shadows = (np.asarray(x) for x in model.logits_with_history(batch))
    candidates = np.asarray(batch.candidate_mask())
    # the candidates' outputs are the plain pass's: no token sees a shadow
    np.testing.assert_allclose(logits[candidates], np.asarray(model(batch))[candidates], atol=1e-5)
    row = int(np.argmax(batch.lengths - batch.num_candidates))
    history = int(batch.lengths[row] - batch.num_candidates[row])
    cut = history // 2
    # flip the actions of exposure `cut`: its shadow and earlier ones stay, later shadows move
    actions = np.array(batch.actions)
    actions[row, cut] = 1.0 - actions[row, cut]
    _, moved = (np.asarray(x) for x in model.logits_with_history(dataclasses.replace(batch, actions=actions)))
    np.testing.assert_allclose(moved[row, :cut + 1], shadows[row, :cut + 1], atol=1e-6)
    assert np.abs(moved[row, cut + 1:history] - shadows[row, cut + 1:history]).max() > 1e-6
    np.testing.assert_allclose(np.delete(moved, row, 0), np.delete(shadows, row, 0), atol=1e-6)


def test_the_history_loss_adds_the_history_exposures_cross_entropy(feed):
    batch = make_batch(feed.dataset, seed=4)
    rng = np.random.default_rng(5)
    logits, history_logits = (jnp.asarray(rng.normal(size=batch.labels.shape), jnp.float32) for _ in range(2))
    loss, per_task = candidate_and_history_bce(logits, history_logits, batch)
    candidates, exposures = np.asarray(batch.candidate_mask()), np.asarray(batch.kinds == TokenKind.EXPOSURE)
    bce = lambda x, y: np.asarray(optax.sigmoid_binary_cross_entropy(x, y))
    total = (bce(logits, batch.labels)[candidates].sum(0) + bce(history_logits, batch.actions)[exposures].sum(0))
    np.testing.assert_allclose(np.asarray(per_task), total / (candidates.sum() + exposures.sum()), rtol=1e-5)
    assert exposures.sum() > 0 and float(loss) != pytest.approx(float(candidate_bce(logits, batch)[0]))


def test_training_with_the_history_loss_takes_it(feed):
    config = GenRankConfig.preset("tiny", feed.dataset.spec, history_loss=True, max_tokens=64)
    trainer = Trainer(config, TrainConfig(steps=3, batch_size=16, max_history=20, max_candidates=8, seed=0),
                      feed.dataset)
    trainer.fit()
    assert len(trainer.history) == 3 and all(np.isfinite(entry["loss"]) for entry in trainer.history)
    assert trainer.evaluate("eval")["click"]["auc"] > 0


def test_the_variants_are_checked_and_the_full_mask_is_not_served(feed):
    spec = feed.dataset.spec
    with pytest.raises(ValueError, match="history_mask"):
        GenRankConfig.preset("tiny", spec, history_mask="bidirectional")
    for bad in (dict(organization="item"), dict(history_mask="full"), dict(architecture="din")):
        with pytest.raises(ValueError, match="history_loss needs"):
            GenRankConfig.preset("tiny", spec, history_loss=True, **bad)
    model = make_model(feed.dataset, history_mask="full")
    with pytest.raises(ServingError, match="history_mask='full'"):
        model.encode_history(split_batch(make_batch(feed.dataset))[0])
    round_trip = GenRankConfig.from_json(GenRankConfig.preset("tiny", spec, history_loss=True).to_json())
    assert round_trip.history_loss and round_trip.history_mask == "causal"
