"""Aggregate features against a per-row loop written from their definition, and the no-leak rule."""

import dataclasses
import json

import numpy as np
import pytest

from genrank_jax.data.aggregates import (
    SMOOTHING,
    AggregateScaling,
    aggregate_features,
    aggregate_names,
    aggregate_scaling,
    num_aggregates,
)
from genrank_jax.data.synthetic import SimulatorConfig, simulate


@pytest.fixture(scope="module")
def dataset():
    return simulate(SimulatorConfig.preset("tests", seed=3)).dataset


def logit(p):
    return np.log(p) - np.log1p(-p)


def reference_row(dataset, r, prior):
    """Row r's unstandardized aggregates by brute force over the whole log."""
    log, spec = dataset.interactions, dataset.spec
    starts = log.request_starts
    request = np.searchsorted(starts, r, side="right") - 1
    now, user = log.timestamps[starts[request]], log.user_ids[starts[request]]
    row_user = log.user_ids
    earlier_item = (log.item_ids == log.item_ids[r]) & (log.timestamps < now)
    earlier_user = (row_user == user) & (np.arange(log.num_exposures) < starts[request])
    masks = [earlier_item, earlier_user]
    for f in range(len(spec.side_vocab_sizes)):
        side = dataset.catalog.side_features[log.item_ids, f]
        masks.append(earlier_user & (side == side[r]))
    rates = [logit((log.actions[m].sum(0) + SMOOTHING * prior) / (m.sum() + SMOOTHING)) for m in masks]
    counts = [np.log1p(m.sum()) for m in masks]
    age = (now - log.timestamps[earlier_item].min()) / 3600 if earlier_item.any() else 0.0
    users = log.request_users()
    previous = request - 1 if request > 0 and users[request - 1] == user else None
    gap = (now - log.timestamps[starts[previous]]) / 3600 if previous is not None else None
    return np.concatenate([*rates, counts, [np.log1p(max(age, 0.0)), 0.0 if gap is None else np.log1p(gap)]])


def test_aggregates_match_their_definition(dataset):
    log = dataset.interactions
    table = aggregate_features(dataset, standardize=False)
    assert table.shape == (log.num_exposures, num_aggregates(dataset.spec)) == (log.num_exposures,
                                                                                 len(aggregate_names(dataset.spec)))
    starts = log.request_starts
    train_rows = np.concatenate([np.arange(starts[q], starts[q + 1]) for q in dataset.train_requests])
    prior = (log.actions[train_rows].sum(0) + 1.0) / (len(train_rows) + 2.0)
    rng = np.random.default_rng(0)
    rows = rng.choice(log.num_exposures, 200, replace=False)
    rows = np.concatenate([rows, starts[:3], [log.num_exposures - 1]])  # first requests: no history
    for r in rows:
        np.testing.assert_allclose(table[r], reference_row(dataset, r, prior), rtol=1e-5, atol=1e-5,
                                   err_msg=f"row {r}")
    assert (table[:, 0] != table[0, 0]).any()  # item rates vary: the features carry information


def test_a_request_and_what_follows_never_reach_its_aggregates(dataset):
    """Changing the actions of a request and of every later exposure leaves its rows' aggregates
    (before standardization) unchanged: they are computed from earlier requests only."""
    log = dataset.interactions
    request = int(dataset.eval_requests[len(dataset.eval_requests) // 2])
    now = log.request_times()[request]
    later = log.timestamps >= now
    flipped = np.asarray(log.actions).copy()
    flipped[later] = 1 - flipped[later]
    changed = dataclasses.replace(dataset, interactions=dataclasses.replace(log, actions=flipped))
    rows = np.arange(log.request_starts[request], log.request_starts[request + 1])
    before = aggregate_features(dataset, standardize=False)
    after = aggregate_features(changed, standardize=False)
    # train rows feed the prior rate; keep them unchanged for the comparison (the flip hits eval time only)
    assert not later[np.concatenate([np.arange(log.request_starts[q], log.request_starts[q + 1])
                                     for q in dataset.train_requests])].any()
    np.testing.assert_array_equal(before[rows], after[rows])
    assert not np.array_equal(before[later], after[later])  # ... while later rows do change


def test_standardized_on_train_rows(dataset):
    log = dataset.interactions
    table = aggregate_features(dataset)
    starts = log.request_starts
    train_rows = np.concatenate([np.arange(starts[q], starts[q + 1]) for q in dataset.train_requests])
    np.testing.assert_allclose(table[train_rows].mean(0), 0.0, atol=1e-4)
    assert np.isfinite(table).all()


def test_a_saved_scaling_gives_the_same_inputs_and_another_datasets_scaling_is_used_as_is(dataset):
    """The scaling saved with a run (JSON round trip) reproduces the training inputs exactly, and
    applied to other data it standardizes with the training statistics, not the new data's."""
    scaling = AggregateScaling.from_dict(json.loads(json.dumps(aggregate_scaling(dataset).to_dict())))
    np.testing.assert_array_equal(aggregate_features(dataset, scaling=scaling), aggregate_features(dataset))
    other = simulate(SimulatorConfig.preset("tests", seed=4)).dataset
    own, borrowed = aggregate_features(other), aggregate_features(other, scaling=scaling)
    assert not np.allclose(own, borrowed, atol=1e-3)
    raw = aggregate_features(other, standardize=False, scaling=scaling)
    np.testing.assert_allclose(borrowed, (raw - scaling.mean) / scaling.deviation, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="columns"):
        scaling.standardize(raw[:, :-1])


def test_transform_from_counts_is_the_training_formula(dataset):
    """A feature store's counts through `AggregateScaling.transform` give the rows' training inputs
    (counts recomputed here by brute force for a few rows)."""
    log, spec = dataset.interactions, dataset.spec
    scaling = aggregate_scaling(dataset)
    table = aggregate_features(dataset)
    starts = log.request_starts
    rng = np.random.default_rng(1)
    for r in rng.choice(log.num_exposures, 20, replace=False):
        request = np.searchsorted(starts, r, side="right") - 1
        now, user = log.timestamps[starts[request]], log.user_ids[starts[request]]
        earlier_item = (log.item_ids == log.item_ids[r]) & (log.timestamps < now)
        earlier_user = (log.user_ids == user) & (np.arange(log.num_exposures) < starts[request])
        masks = [earlier_item, earlier_user] + [
            earlier_user & (dataset.catalog.side_features[log.item_ids, f] ==
                            dataset.catalog.side_features[log.item_ids[r], f])
            for f in range(len(spec.side_vocab_sizes))]
        counts = np.array([[m.sum() for m in masks]])
        positives = np.array([[log.actions[m].sum(0) for m in masks]])
        age = (now - log.timestamps[earlier_item].min()) / 3600 if earlier_item.any() else -1.0
        users = log.request_users()
        gap = (now - log.timestamps[starts[request - 1]]) / 3600 if request > 0 and users[request - 1] == user else -1
        np.testing.assert_allclose(scaling.transform(counts, positives, [age], [gap])[0], table[r], rtol=1e-4,
                                   atol=1e-4, err_msg=f"row {r}")
