"""Aggregate features: what a production ranker's feature store knows about an exposure.

For every exposure row, computed from *earlier requests only* (point in time: nothing at or after
the row's request time, so the row's own label and its request's never leak in), per action a:
- the item's smoothed a-rate over every earlier exposure of the item (all users) and its count;
- the user's smoothed a-rate over the user's earlier requests and their count;
- per item side feature f: the user's smoothed a-rate on earlier items sharing this item's value
  of f (e.g. the user's like rate on this genre) and that count;
plus recency: log hours since the item was first shown (0 when never) and since the user's
previous request (0 when none).

Smoothed rate = (positives + m * p) / (count + m), p the action's rate over train rows and m
`SMOOTHING`, given as a logit; counts are given as log1p. Columns are standardized with the
train rows' mean and deviation, so a linear model on them starts well conditioned.
"""

from __future__ import annotations

import numpy as np

from genrank_jax.data.schema import FeatureSpec, RankingDataset

SMOOTHING = 10.0  # pseudo-exposures at the prior rate: a rate from 3 exposures stays near the prior


def aggregate_names(spec: FeatureSpec, side_names: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """Column names of `aggregate_features` for datasets of this spec (K = len of this)."""
    sides = side_names or tuple(f"side{f}" for f in range(len(spec.side_vocab_sizes)))
    keys = ("item", "user", *(f"user_{s}" for s in sides))
    rates = tuple(f"{key}_{action}_rate" for key in keys for action in spec.action_names)
    counts = tuple(f"{key}_count" for key in keys)
    return rates + counts + ("item_age_hours", "hours_since_previous_request")


def num_aggregates(spec: FeatureSpec) -> int:
    """K: columns of the aggregate table of datasets of this spec."""
    return (spec.num_actions + 1) * (2 + len(spec.side_vocab_sizes)) + 2


def _counts_before(keys: np.ndarray, order_value: np.ndarray, query_value: np.ndarray, actions: np.ndarray):
    """Per row r: (count, positives [A], first order_value) over rows s with keys[s] == keys[r] and
    order_value[s] < query_value[r]. keys: dense int64 codes; order/query values: dense int64 ranks."""
    span = int(max(order_value.max(initial=0), query_value.max(initial=0))) + 2
    composite = keys * span + order_value  # < 2^63 for keys and ranks below 3 * 10^9 each
    order = np.argsort(composite, kind="stable")
    sorted_composite = composite[order]
    group_start = np.searchsorted(sorted_composite, keys * span, side="left")
    before = np.searchsorted(sorted_composite, keys * span + query_value, side="left")
    cumulative = np.zeros((len(keys) + 1, actions.shape[1]), np.int64)
    np.cumsum(actions[order], axis=0, out=cumulative[1:])
    first = order[np.minimum(group_start, len(keys) - 1)]
    return before - group_start, cumulative[before] - cumulative[group_start], first


def _rows_of(starts: np.ndarray, requests: np.ndarray) -> np.ndarray:
    """Exposure rows of `requests`, in their order, without a Python loop over requests."""
    counts = starts[requests + 1] - starts[requests]
    return np.repeat(starts[requests] - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())


def aggregate_features(dataset: RankingDataset, *, standardize: bool = True) -> np.ndarray:
    """[E, K] float32 per-exposure aggregates (columns: `aggregate_names(dataset.spec)`)."""
    log, spec = dataset.interactions, dataset.spec
    num_rows, starts = log.num_exposures, log.request_starts
    actions = np.asarray(log.actions, np.int64)
    request_of_row = np.repeat(np.arange(log.num_requests), np.diff(starts))
    request_time = log.request_times()
    users = log.request_users()
    first_of_user = np.ones(log.num_requests, bool)
    first_of_user[1:] = users[1:] != users[:-1]
    user_start = np.maximum.accumulate(np.where(first_of_user, starts[:-1], 0))
    train_rows = _rows_of(starts, np.asarray(dataset.train_requests)) if len(dataset.train_requests) \
        else np.arange(num_rows)
    prior = (actions[train_rows].sum(0) + 1.0) / (len(train_rows) + 2.0)  # [A], never 0 or 1

    def smoothed_logit(count, positives):
        rate = (positives + SMOOTHING * prior) / (count[:, None] + SMOOTHING)
        return np.log(rate) - np.log1p(-rate)

    rates, counts = [], []
    # the item over every earlier exposure of any user: ranks of time, strictly before the request
    distinct_times, time_rank = np.unique(log.timestamps, return_inverse=True)
    query_rank = np.searchsorted(distinct_times, request_time[request_of_row], side="left")
    item_count, item_positives, item_first = _counts_before(
        np.asarray(log.item_ids, np.int64), time_rank.astype(np.int64), query_rank.astype(np.int64), actions)
    rates.append(smoothed_logit(item_count, item_positives))
    counts.append(item_count)
    # the user over earlier requests: rows user_start .. request start (rows are per user, in time order)
    cumulative = np.zeros((num_rows + 1, actions.shape[1]), np.int64)
    np.cumsum(actions, axis=0, out=cumulative[1:])
    begin, end = user_start[request_of_row], starts[:-1][request_of_row]
    user_count = end - begin
    rates.append(smoothed_logit(user_count, cumulative[end] - cumulative[begin]))
    counts.append(user_count)
    # the user on this item's value of each side feature, over earlier requests
    row = np.arange(num_rows, dtype=np.int64)
    for f in range(len(spec.side_vocab_sizes)):
        value = np.asarray(dataset.catalog.side_features[log.item_ids, f], np.int64)
        pair = users[request_of_row].astype(np.int64) * spec.side_vocab_sizes[f] + value
        _, pair_code = np.unique(pair, return_inverse=True)
        count, positives, _ = _counts_before(pair_code.astype(np.int64), row, end.astype(np.int64), actions)
        rates.append(smoothed_logit(count, positives))
        counts.append(count)
    hour = 3600.0
    item_age = np.where(item_count > 0, (request_time[request_of_row] - log.timestamps[item_first]) / hour, 0.0)
    previous = np.full(log.num_requests, -1.0)
    previous[1:] = np.where(first_of_user[1:], -1.0, (request_time[1:] - request_time[:-1]) / hour)
    since_previous = previous[request_of_row]
    table = np.concatenate(
        [*rates, np.log1p(np.stack(counts, 1)), np.log1p(np.maximum(item_age, 0.0))[:, None],
         np.where(since_previous >= 0, np.log1p(np.maximum(since_previous, 0.0)), 0.0)[:, None]], axis=1)
    assert table.shape[1] == num_aggregates(spec)
    if not standardize:
        return table.astype(np.float32)
    mean, deviation = table[train_rows].mean(0), table[train_rows].std(0)
    return ((table - mean) / np.where(deviation > 0, deviation, 1.0)).astype(np.float32)
