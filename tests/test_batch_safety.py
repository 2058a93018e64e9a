"""Out-of-vocabulary ids never become NaN: `validate_batch` names every bad field and row, and the
models' lookups are safe without it (ids past a table are masked, ordinal ids are clipped)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genrank_jax.data.samples import SampleBuilder, SampleLayout
from genrank_jax.data.synthetic import SimulatorConfig, simulate
from genrank_jax.data.tokens import TokenKind
from genrank_jax.model.baselines import build_model
from genrank_jax.model.config import GenRankConfig
from genrank_jax.model.losses import candidate_bce
from genrank_jax.model.validation import BatchError, validate_batch
from genrank_jax.training import usable_requests

VARIANTS = [
    ("genrank", "action", "transformer"),
    ("genrank", "action", "hstu"),
    ("genrank", "item", "transformer"),
    ("din", "action", "transformer"),
    ("logistic", "action", "transformer"),
]


@pytest.fixture(scope="module")
def dataset():
    return simulate(SimulatorConfig.preset("tests")).dataset


def make_batch(dataset, organization="action", count=6, rng=None):
    builder = SampleBuilder(dataset, SampleLayout(max_history=20, organization=organization))
    rng = rng or np.random.default_rng(10)
    requests = rng.choice(usable_requests(builder, dataset.train_requests, 1), count, replace=False)
    return builder.build(requests, int(builder.token_counts(requests).max()) + 3)


def config_for(dataset, architecture="genrank", organization="action", block="transformer"):
    return GenRankConfig.preset("tiny", dataset.spec, architecture=architecture, organization=organization,
                                block=block)


def replaced(batch, field, where, value):
    """`batch` with `field[where] = value` (a numpy copy)."""
    array = np.array(getattr(batch, field))
    array[where] = value
    return dataclasses.replace(batch, **{field: array})


def pick(batch, kind, rng):
    """(row, token) of a random token of `kind`."""
    rows, tokens = np.nonzero(np.asarray(batch.kinds) == kind)
    i = rng.integers(len(rows))
    return int(rows[i]), int(tokens[i])


# field, token kind whose value is spoiled, value (from the config), what the error says
BAD_INPUTS = [
    ("labels", TokenKind.CANDIDATE, lambda c: 7.0, r"labels must be 0 or 1, got 7.0 at row {row}, token {token}"),
    ("labels", TokenKind.CANDIDATE, lambda c: np.nan, r"labels contain NaN or infinity \(first at row {row}"),
    ("actions", TokenKind.EXPOSURE, lambda c: np.nan, r"actions contain NaN or infinity \(first at row {row}"),
    ("content", TokenKind.EXPOSURE, lambda c: np.inf, r"content contain NaN or infinity \(first at row {row}"),
    ("timestamps", TokenKind.EXPOSURE, lambda c: np.nan, r"timestamps contain NaN or infinity \(first at row {row}"),
    ("user_ids", None, lambda c: -3, r"user id -3 at row {row} is outside \[0, 300\)"),
    ("user_ids", None, lambda c: c.features.num_users, r"user id 300 at row {row} is outside \[0, 300\).*not hashed"),
    ("kinds", TokenKind.EXPOSURE, lambda c: 9, r"token kind 9 at row {row}, token {token} is outside \[0, 5\)"),
    ("item_ids", TokenKind.CANDIDATE, lambda c: c.features.num_items, r"item id 400 at row {row}, token {token}"),
    ("item_ids", TokenKind.EXPOSURE, lambda c: -7, r"item id -7 at row {row}, token {token}"),
    ("side", TokenKind.EXPOSURE, lambda c: 16, r"side feature 0 value 16 at row {row}, token {token}"),
    ("request_index", TokenKind.EXPOSURE, lambda c: c.num_request_slots, r"request_index 64 at row {row}"),
    ("gap_bucket", TokenKind.CANDIDATE, lambda c: -1, r"gap_bucket -1 at row {row}, token {token}"),
    ("positions", TokenKind.EXPOSURE, lambda c: -2, r"position -2 at row {row}, token {token}"),
    ("slot", TokenKind.CANDIDATE, lambda c: -1, r"slot -1 at row {row}, token {token}"),
]


@pytest.mark.parametrize("field,kind,value,message", BAD_INPUTS,
                         ids=[f"{f}-{i}" for i, (f, *_) in enumerate(BAD_INPUTS)])
def test_validate_batch_names_each_bad_field_and_row(dataset, field, kind, value, message):
    rng = np.random.default_rng(11)
    config = config_for(dataset)
    batch = make_batch(dataset, rng=rng)
    validate_batch(batch, config)
    if kind is None:
        row, token = int(rng.integers(batch.batch_size)), None
        where = row
    else:
        row, token = pick(batch, kind, rng)
        where = (row, token, 0) if field == "side" else (row, token)
    with pytest.raises(BatchError, match=message.format(row=row, token=token)):
        validate_batch(replaced(batch, field, where, value(config)), config)


def spoil_ids(batch, config, rng, item_id, huge):
    """A batch with out-of-table ids everywhere a lookup reads one: items, side features, request
    index, gap bucket, slot and position (`huge` picks how far past the table they lie)."""
    exposure, candidate = pick(batch, TokenKind.EXPOSURE if config.organization == "action" else TokenKind.ITEM,
                               rng), pick(batch, TokenKind.CANDIDATE, rng)
    batch = replaced(batch, "item_ids", exposure, item_id)
    batch = replaced(batch, "item_ids", candidate, item_id + 1)
    batch = replaced(batch, "side", exposure + (1,), config.features.side_vocab_sizes[1] + huge)
    batch = replaced(batch, "request_index", exposure, config.num_request_slots - 1 + huge)
    batch = replaced(batch, "gap_bucket", candidate, config.num_gap_buckets - 1 + huge)
    return replaced(batch, "slot", candidate, config.num_slots - 1 + huge)


@pytest.mark.parametrize("architecture,organization,block", VARIANTS)
def test_model_lookups_are_safe_without_validation(dataset, architecture, organization, block):
    rng = np.random.default_rng(12)
    config = config_for(dataset, architecture, organization, block)
    model = build_model(config, rngs=nnx.Rngs(int(rng.integers(1 << 30))))
    batch = make_batch(dataset, organization, rng=rng)
    num_items = config.features.num_items
    near = spoil_ids(batch, config, np.random.default_rng(1), num_items, huge=0)  # last rows / first OOV id
    far = spoil_ids(batch, config, np.random.default_rng(1), 10 * num_items, huge=1000)
    with pytest.raises(BatchError):
        validate_batch(near, config)
    forward = nnx.jit(lambda m, b: m(b))  # one compile for both batches (same shapes)
    near_logits = np.asarray(forward(model, jax.tree.map(jnp.asarray, near)))
    far_logits = np.asarray(forward(model, jax.tree.map(jnp.asarray, far)))
    assert np.isfinite(near_logits).all() and np.isfinite(far_logits).all()
    # masked ids give a zero row whatever their value; clipped ones their table's last row
    np.testing.assert_array_equal(far_logits, near_logits)


def test_gradients_stay_finite_with_out_of_vocabulary_ids(dataset):
    rng = np.random.default_rng(13)
    config = config_for(dataset)
    model = build_model(config, rngs=nnx.Rngs(0))
    batch = spoil_ids(make_batch(dataset, rng=rng), config, rng, 5 * config.features.num_items, huge=77)
    batch = jax.tree.map(jnp.asarray, batch)
    loss_fn = lambda m: candidate_bce(m(batch), batch, None)[0]
    loss, grads = nnx.jit(nnx.value_and_grad(loss_fn))(model)
    assert np.isfinite(float(loss))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_positions_past_the_table_take_its_last_row(dataset):
    """Token embeddings clip a position past `max_tokens` to the table's last row (the position
    table is the one lookup spoil_ids cannot spoil: a position also moves the ALiBi distances)."""
    rng = np.random.default_rng(14)
    config = config_for(dataset)
    model = build_model(config, rngs=nnx.Rngs(0))
    batch = make_batch(dataset, rng=rng)
    where = pick(batch, TokenKind.EXPOSURE, rng)
    last = replaced(batch, "positions", where, config.max_tokens - 1)
    past = replaced(batch, "positions", where, config.max_tokens + 1000)
    embed = nnx.jit(lambda m, b: m.embed(b))
    want = np.asarray(embed(model, jax.tree.map(jnp.asarray, last)))
    got = np.asarray(embed(model, jax.tree.map(jnp.asarray, past)))
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, want)
