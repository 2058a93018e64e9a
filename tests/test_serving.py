"""Serving: cached scoring equals the full forward pass; append is exact; micro-batches compile once.

The oracle is always the model's own full training-style pass (`model(batch)`) on history +
candidates, gathered at the candidate tokens, on real token batches from the simulator (users with
different history lengths, one with no history at all) and freshly initialized models.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genrank_jax.data.samples import SampleBuilder, SampleLayout
from genrank_jax.data.synthetic import SimulatorConfig, simulate
from genrank_jax.model import GenRank
from genrank_jax.model.config import GenRankConfig
from genrank_jax.serving import History, ServingError, split_batch
from genrank_jax.serving.scorer import Request, Scorer, requests_from

ATOL = 1e-5
VARIANTS = [(organization, block) for organization in ("action", "item") for block in ("transformer", "hstu")]


@pytest.fixture(scope="module")
def feed():
    return simulate(SimulatorConfig.preset("tests"))


def make_batch(dataset, organization, seed=0, count=5, max_history=20, aggregates=False):
    """A token batch whose rows have different history lengths, one of them none (with the aggregate
    features training gives a model that reads them, if `aggregates`)."""
    builder = SampleBuilder(dataset, SampleLayout(max_history=max_history, organization=organization,
                                                  aggregates=aggregates))
    rng = np.random.default_rng(seed)
    requests = np.asarray(dataset.train_requests)
    with_history = requests[builder.history_count[requests] >= 1]
    chosen = np.concatenate([rng.choice(with_history, count - 1, replace=False),
                             requests[builder.history_count[requests] == 0][:1]])
    return builder.build(chosen, int(builder.token_counts(chosen).max()) + 3)


def make_model(dataset, organization, block, seed=0, **overrides):
    config = GenRankConfig.preset("tiny", dataset.spec, organization=organization, block=block, num_blocks=2,
                                  **overrides)
    return GenRank(config, rngs=nnx.Rngs(seed))


def full_pass_candidates(model, batch):
    """[B, M, A] logits of the full pass at each candidate token (0 on empty slots)."""
    graphdef, state = nnx.split(model)
    logits = np.asarray(jax.jit(lambda state, batch: nnx.merge(graphdef, state)(batch))(state, batch))
    index = np.minimum(np.asarray(batch.candidate_index), batch.seq_len - 1)
    gathered = np.take_along_axis(logits, index[..., None], axis=1)
    valid = np.arange(index.shape[1])[None, :] < np.asarray(batch.num_candidates)[:, None]
    return np.where(valid[..., None], gathered, 0.0)


@pytest.mark.parametrize("organization,block", VARIANTS)
def test_score_equals_full_forward_pass(feed, organization, block):
    batch = make_batch(feed.dataset, organization, seed=len(organization) + len(block))
    model = make_model(feed.dataset, organization, block)
    history, candidates = split_batch(batch)
    assert len(set(np.asarray(history.lengths).tolist())) > 1 and 0 in history.lengths
    scorer = Scorer(model)  # GenRank.encode_history / score, compiled (tests run faster than eagerly)
    cache = scorer.encode(history, num_candidates=candidates.num_candidates, capacity=history.item_ids.shape[1] + 5)
    got = np.asarray(scorer.score(cache, candidates))
    want = full_pass_candidates(model, batch)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=ATOL / 10)
    assert np.abs(want).max() > 0.1


@pytest.mark.parametrize("block", ["transformer", "hstu"])
def test_score_through_the_pallas_cached_kernel(feed, block):
    """The model's cached attention through the Pallas backend (interpret mode on the CPU)."""
    batch = make_batch(feed.dataset, "action", seed=7, count=3, max_history=12)
    model = make_model(feed.dataset, "action", block, attention_interpret=True)
    history, candidates = split_batch(batch)
    scorer = Scorer(model, impl="pallas_triton")
    got = np.asarray(scorer.score(scorer.encode(history, num_candidates=candidates.num_candidates), candidates))
    np.testing.assert_allclose(got, full_pass_candidates(model, batch), atol=ATOL, rtol=ATOL / 10)


@pytest.mark.parametrize("organization", ["action", "item"])
def test_append_equals_recomputation(feed, organization):
    batch = make_batch(feed.dataset, organization, seed=3)
    model = make_model(feed.dataset, organization, "transformer", seed=1)
    history, candidates = split_batch(batch)
    tokens_per_exposure = 2 if organization == "item" else 1
    lengths = np.asarray(history.lengths)
    # split each history after a random whole number of exposures
    rng = np.random.default_rng(0)
    first = np.array([rng.integers(0, n // tokens_per_exposure + 1) * tokens_per_exposure for n in lengths])
    width = history.item_ids.shape[1]
    shifted = lambda a, offset: np.stack([np.roll(np.asarray(a)[b], -offset[b], axis=0) for b in range(len(offset))])
    older = dataclasses.replace(history, lengths=first.astype(np.int32))
    newer = History(**{name: (shifted(value, first) if np.ndim(value) >= 2 else value)
                       for name, value in vars(history).items() if name != "lengths"},
                    lengths=(lengths - first).astype(np.int32))
    scorer = Scorer(model)  # compiled encode / append / score
    appended = scorer.append(scorer.encode(older, capacity=width + 4), newer)
    recomputed = scorer.encode(history, capacity=width + 4)
    np.testing.assert_array_equal(appended.lengths, recomputed.lengths)
    for got, want in zip(appended.keys + appended.values, recomputed.keys + recomputed.values):
        for b, n in enumerate(lengths):
            np.testing.assert_allclose(np.asarray(got)[b, :n], np.asarray(want)[b, :n], atol=ATOL, rtol=ATOL / 10)
    np.testing.assert_allclose(scorer.score(appended, candidates), full_pass_candidates(model, batch),
                               atol=ATOL, rtol=ATOL / 10)


def test_append_refuses_hstu(feed):
    batch = make_batch(feed.dataset, "action")
    model = make_model(feed.dataset, "action", "hstu")
    history, candidates = split_batch(batch)
    cache = model.encode_history(history, num_candidates=candidates.num_candidates)
    with pytest.raises(ServingError, match="HSTU"):
        cache.append(history, model=model)


@pytest.mark.parametrize("block", ["transformer", "hstu"])
def test_micro_batches_compile_once_and_equal_the_full_pass(feed, block):
    model = make_model(feed.dataset, "action", block, seed=2)
    scorer = Scorer(model, rows_per_batch=3, candidates_per_row=4)
    for seed in (4, 5):  # request sizes differ from call to call; the cache shape does not
        batch = make_batch(feed.dataset, "action", seed=seed, max_history=16)
        history, candidates = split_batch(batch)
        rng = np.random.default_rng(seed)
        counts = rng.integers(1, np.asarray(candidates.num_candidates) + 1)  # a random prefix of each request
        candidates = dataclasses.replace(candidates, num_candidates=counts.astype(np.int32))
        batch = dataclasses.replace(batch, num_candidates=counts.astype(np.int32),
                                    lengths=(np.asarray(history.lengths) + counts).astype(np.int32),
                                    candidate_index=np.where(
                                        np.arange(batch.candidate_index.shape[1]) < counts[:, None],
                                        batch.candidate_index, batch.seq_len).astype(np.int32))
        cache = scorer.encode(history, num_candidates=counts, capacity=20)
        logits = scorer.score_requests(cache, requests_from(candidates))
        want = full_pass_candidates(model, batch)
        for b, got in enumerate(logits):
            assert got.shape == (counts[b], model.config.features.num_actions)
            np.testing.assert_allclose(got, want[b, :counts[b]], atol=ATOL, rtol=ATOL / 10)
    assert scorer.compilations() == 1


def test_eager_api_checks_bad_input_with_clear_errors(feed):
    batch = make_batch(feed.dataset, "action")
    model = make_model(feed.dataset, "action", "transformer")
    history, candidates = split_batch(batch)
    num_items = feed.dataset.spec.num_items
    cache = model.encode_history(history)  # eager: the checks see concrete values
    np.testing.assert_allclose(model.score(cache, candidates), full_pass_candidates(model, batch),
                               atol=ATOL, rtol=ATOL / 10)
    unknown = np.array(candidates.item_ids)
    unknown[0, 0] = num_items + 3
    with pytest.raises(ServingError, match=rf"unknown item id.*\[{num_items + 3}\]"):
        model.score(cache, dataclasses.replace(candidates, item_ids=unknown))
    bad_history = np.array(history.item_ids)
    bad_history[0, 0] = -7
    with pytest.raises(ServingError, match="history tokens hold 1 unknown item id"):
        model.encode_history(dataclasses.replace(history, item_ids=bad_history))
    with pytest.raises(ServingError, match="empty"):
        model.score(cache, dataclasses.replace(candidates, num_candidates=np.zeros_like(candidates.num_candidates)))
    scorer = Scorer(model)
    requests = requests_from(candidates)
    requests[2] = Request(item_ids=np.zeros(0, np.int32))
    with pytest.raises(ServingError, match="request 2 has an empty candidate list"):
        scorer.score_requests(cache, requests)
    requests[2] = Request(item_ids=np.array([1, num_items]))
    with pytest.raises(ServingError, match="request 2 holds 1 unknown item id"):
        scorer.score_requests(cache, requests)
    short = make_model(feed.dataset, "action", "transformer", max_tokens=16)
    with pytest.raises(ServingError, match="position table covers 16 positions"):
        short.encode_history(history)
    other = make_model(feed.dataset, "action", "transformer", seed=9)
    with pytest.raises(ServingError, match="encoded by another model"):
        other.score(cache, candidates)
    with pytest.raises(ServingError, match="encoded by another model"):
        Scorer(other).score_requests(cache, requests_from(candidates))
    wider = make_model(feed.dataset, "action", "transformer", num_heads=4)
    with pytest.raises(ServingError, match="encoded by another model"):
        wider.score(cache, candidates)
    hstu = make_model(feed.dataset, "action", "hstu")
    with pytest.raises(ServingError, match="needs num_candidates"):
        hstu.encode_history(history)
    hstu_cache = Scorer(hstu).encode(history, num_candidates=candidates.num_candidates)
    fewer = requests_from(candidates)
    fewer[0] = Request(item_ids=np.asarray(fewer[0].item_ids)[:1])
    with pytest.raises(ServingError, match="request 0 has 1 candidates but its cache was encoded for"):
        Scorer(hstu).score_requests(hstu_cache, fewer)


def test_unknown_users_raise_and_jitted_code_gives_them_the_zero_user_row(feed):
    """User 303 of 300 used to be scored as user 3, user -1 as user 299 (`id % user_rows`)."""
    from genrank_jax.serving import history_cache as serving

    batch = make_batch(feed.dataset, "action", seed=3)
    model = make_model(feed.dataset, "action", "transformer")
    history, candidates = split_batch(batch)
    num_users = feed.dataset.spec.num_users
    for user in (num_users + 3, -1):
        users = np.array(history.user_ids)
        users[0] = user
        stranger = dataclasses.replace(history, user_ids=users)
        with pytest.raises(ServingError, match=rf"unknown user id.*0\.\.{num_users - 1}\): \[{user}\]"):
            model.encode_history(stranger)
        with pytest.raises(ServingError, match="unknown user id"):
            Scorer(model).encode(stranger)
    cache = model.encode_history(history)
    users = np.array(cache.user_ids)
    users[1] = num_users
    with pytest.raises(ServingError, match="the cache's user_ids hold 1 unknown user id"):
        model.score(dataclasses.replace(cache, user_ids=users), candidates)

    # under jit (and so in the exported artifact) nothing can raise: the unknown user gets a zero
    # user vector, i.e. what a known user gets from a model whose user table is zero
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda state, history: serving.score(
        nnx.merge(graphdef, state), serving.encode_history(nnx.merge(graphdef, state), history), candidates))
    users = np.array(history.user_ids)
    users[0] = num_users + 3
    got = np.asarray(run(state, dataclasses.replace(history, user_ids=users)))
    blank = nnx.split(make_model(feed.dataset, "action", "transformer"))[1]
    table = blank["embed"]["user"]["embedding"]
    table[...] = jnp.zeros_like(table[...])
    users[0] = 3
    want = np.asarray(run(blank, dataclasses.replace(history, user_ids=users)))
    np.testing.assert_allclose(got[0], want[0], atol=ATOL, rtol=ATOL / 10)
    as_user_3 = np.asarray(run(state, dataclasses.replace(history, user_ids=users)))
    assert np.abs(got[0] - as_user_3[0]).max() > 1e-3, "the unknown user was scored as a real one"


def test_nan_at_a_padded_history_token_changes_no_score(feed):
    """NaN content or actions past `lengths` used to make every logit of the user NaN (the cached
    op multiplied zero weights by the cache's NaN)."""
    batch = make_batch(feed.dataset, "action", seed=4)
    model = make_model(feed.dataset, "action", "transformer")
    history, candidates = split_batch(batch)
    scorer = Scorer(model)
    want = np.asarray(scorer.score(scorer.encode(history), candidates))
    lengths = np.asarray(history.lengths)
    assert (lengths < history.item_ids.shape[1]).any()
    content, actions = np.array(history.content), np.array(history.actions)
    for b, length in enumerate(lengths):
        content[b, length:], actions[b, length:] = np.nan, np.nan
    poisoned = dataclasses.replace(history, content=content, actions=actions)
    got = np.asarray(scorer.score(scorer.encode(poisoned), candidates))
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, want)


def test_side_features_of_the_wrong_width_or_out_of_vocabulary_raise(feed):
    """A narrower side array used to be read by index clamping (feature 1 read feature 0); an id
    past a side feature's vocabulary was masked to zero without a word."""
    batch = make_batch(feed.dataset, "action", seed=5)
    model = make_model(feed.dataset, "action", "transformer")
    history, candidates = split_batch(batch)
    sizes = feed.dataset.spec.side_vocab_sizes
    assert len(sizes) == 2
    cache = model.encode_history(history)
    narrow = dataclasses.replace(candidates, side=np.asarray(candidates.side)[..., :1])
    with pytest.raises(ServingError, match=r"candidates.side must be \[B, N, 2\].*got shape \(5, \d+, 1\)"):
        model.score(cache, narrow)
    with pytest.raises(ServingError, match=r"candidates.side must be \[B, N, 2\]"):
        Scorer(model).score(cache, narrow)
    with pytest.raises(ServingError, match=r"history.side must be \[B, N, 2\]"):
        model.encode_history(dataclasses.replace(history, side=np.asarray(history.side)[..., :1]))
    requests = requests_from(candidates)
    requests[1] = dataclasses.replace(requests[1], side=np.asarray(requests[1].side)[:, :1])
    with pytest.raises(ServingError, match=r"request 1: side must be \[\d+, 2\].*got shape \(\d+, 1\)"):
        Scorer(model).score_requests(cache, requests)

    side = np.array(candidates.side)
    side[0, 0, 1] = sizes[1] + 4
    with pytest.raises(ServingError, match=rf"candidates.side feature 1 holds 1 unknown id.*0\.\.{sizes[1] - 1}\): "
                                           rf"\[{sizes[1] + 4}\]"):
        model.score(cache, dataclasses.replace(candidates, side=side))
    history_side = np.array(history.side)
    history_side[0, 0, 0] = -2
    with pytest.raises(ServingError, match=r"history.side feature 0 holds 1 unknown id"):
        model.encode_history(dataclasses.replace(history, side=history_side))
    requests = requests_from(dataclasses.replace(candidates, side=side))
    with pytest.raises(ServingError, match=r"request 0.side feature 1 holds 1 unknown id"):
        Scorer(model).score_requests(cache, requests)
