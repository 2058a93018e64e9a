"""Serving a model that reads aggregate features (GenRank's default): the history's and candidates'
aggregates go in beside the ids, and cached scoring, append, micro-batches and the export equal the
full training pass; padding never poisons, a missing or misshapen input is refused by name."""

import dataclasses

import numpy as np
import pytest

from genrank_jax.data.synthetic import SimulatorConfig, simulate
from genrank_jax.data.tokens import NO_ITEM
from genrank_jax.serving import History, ServingError, split_batch
from genrank_jax.serving.scorer import Scorer, requests_from
from tests.test_serving import ATOL, full_pass_candidates, make_batch, make_model


@pytest.fixture(scope="module")
def feed():
    return simulate(SimulatorConfig.preset("tests", seed=5))


def aggregate_batch(dataset, seed=0, count=5):
    return make_batch(dataset, "action", seed=seed, count=count, aggregates=True)


def aggregate_model(dataset, seed=0):
    # a random deep head (zero_deep_head=False) so the sequence part and the aggregates both count
    return make_model(dataset, "action", "transformer", seed=seed, use_aggregates=True, zero_deep_head=False)


def test_score_and_append_with_aggregates_equal_the_full_pass(feed):
    batch = aggregate_batch(feed.dataset)
    model = aggregate_model(feed.dataset)
    history, candidates = split_batch(batch)
    assert history.aggregates is not None and np.abs(candidates.aggregates).max() > 0.1
    scorer = Scorer(model)
    want = full_pass_candidates(model, batch)
    cache = scorer.encode(history, capacity=history.item_ids.shape[1] + 4)
    np.testing.assert_allclose(scorer.score(cache, candidates), want, atol=ATOL, rtol=ATOL / 10)
    # the aggregates matter: zeroing the candidates' changes the scores
    blank = dataclasses.replace(candidates, aggregates=np.zeros_like(candidates.aggregates))
    assert np.abs(np.asarray(scorer.score(cache, blank)) - want).max() > 1e-3
    # append: the first half of each history, then the rest with its aggregates
    lengths = np.asarray(history.lengths)
    first = lengths // 2
    shifted = lambda a: np.stack([np.roll(np.asarray(a)[b], -first[b], axis=0) for b in range(len(first))])
    older = dataclasses.replace(history, lengths=first.astype(np.int32))
    newer = History(**{name: (shifted(value) if np.ndim(value) >= 2 else value)
                       for name, value in vars(history).items() if name != "lengths"},
                    lengths=(lengths - first).astype(np.int32))
    appended = scorer.append(scorer.encode(older, capacity=history.item_ids.shape[1] + 4), newer)
    np.testing.assert_allclose(scorer.score(appended, candidates), want, atol=ATOL, rtol=ATOL / 10)
    # micro-batched requests carry their candidates' aggregates
    for b, got in enumerate(Scorer(model, rows_per_batch=2, candidates_per_row=3).score_requests(
            cache, requests_from(candidates))):
        np.testing.assert_allclose(got, want[b, :candidates.num_candidates[b]], atol=ATOL, rtol=ATOL / 10)


def test_nan_aggregates_in_padding_change_no_score_and_nan_at_a_valid_token_propagates(feed):
    batch = aggregate_batch(feed.dataset, seed=2)
    model = aggregate_model(feed.dataset, seed=1)
    history, candidates = split_batch(batch)
    # one empty candidate slot more for every user (NO_ITEM there), so each request has padding
    widen = lambda a, value=0: np.pad(np.asarray(a), [(0, 0), (0, 1)] + [(0, 0)] * (np.ndim(a) - 2),
                                      constant_values=value)
    candidates = dataclasses.replace(candidates, item_ids=widen(candidates.item_ids, NO_ITEM),
                                     side=widen(candidates.side), content=widen(candidates.content),
                                     slot=widen(candidates.slot), aggregates=widen(candidates.aggregates))
    want = np.asarray(model.score(model.encode_history(history), candidates))
    padded_history, padded_candidates = np.array(history.aggregates), np.array(candidates.aggregates)
    for b, (length, count) in enumerate(zip(history.lengths, candidates.num_candidates)):
        padded_history[b, length:], padded_candidates[b, count:] = np.nan, np.nan
    assert np.isnan(padded_history).any() and np.isnan(padded_candidates).any()
    poisoned_history = dataclasses.replace(history, aggregates=padded_history)
    poisoned_candidates = dataclasses.replace(candidates, aggregates=padded_candidates)
    got = np.asarray(model.score(model.encode_history(poisoned_history), poisoned_candidates))
    np.testing.assert_array_equal(got, want)
    valid = np.array(candidates.aggregates)
    valid[0, 0, 0] = np.nan  # a real candidate's input: its score is NaN, the others' are not
    got = np.asarray(model.score(model.encode_history(history), dataclasses.replace(candidates, aggregates=valid)))
    assert np.isnan(got[0, 0]).all() and np.isfinite(got[1:]).all()


def test_missing_or_misshapen_aggregates_are_refused_by_name(feed):
    batch = aggregate_batch(feed.dataset, count=3)
    model = aggregate_model(feed.dataset)
    history, candidates = split_batch(batch)
    with pytest.raises(ServingError, match=r"history\.aggregates is missing"):
        model.encode_history(dataclasses.replace(history, aggregates=None))
    cache = model.encode_history(history)
    with pytest.raises(ServingError, match=r"candidates\.aggregates must be \[B, N, \d+\]"):
        model.score(cache, dataclasses.replace(candidates, aggregates=candidates.aggregates[..., :-1]))
    scorer = Scorer(model)
    requests = [dataclasses.replace(r, aggregates=None) for r in requests_from(candidates)]
    with pytest.raises(ServingError, match="request 0 has no aggregates"):
        scorer.score_requests(cache, requests)
    # a model without aggregate inputs ignores any given
    plain = make_model(feed.dataset, "action", "transformer")
    np.testing.assert_array_equal(
        np.asarray(plain.score(plain.encode_history(history), candidates)),
        np.asarray(plain.score(plain.encode_history(dataclasses.replace(history, aggregates=None)),
                               dataclasses.replace(candidates, aggregates=None))))
