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

`aggregate_columns` states the formula once, from counts a feature store keeps; `AggregateScaling`
holds what the training data fixed (the prior p, the means and deviations), is saved with a run and
an export, and turns a serving request's counts into exactly the inputs training gave the model.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from genrank_jax.data.schema import FeatureSpec, RankingDataset

SMOOTHING = 10.0  # pseudo-exposures at the prior rate: a rate from 3 exposures stays near the prior
SCALING_FILE = "aggregates.json"  # an `AggregateScaling` beside a run's checkpoints and in an export


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


def counts_before(keys: np.ndarray, order_value: np.ndarray, query_value: np.ndarray, actions: np.ndarray):
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


def _counts_of(dataset: RankingDataset):
    """Per exposure row: counts [E, G], positives [E, G, A], item age and hours since the previous
    request (hours, < 0: none), and the train rows."""
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
    counts, positives = [], []
    # the item over every earlier exposure of any user: ranks of time, strictly before the request
    distinct_times, time_rank = np.unique(log.timestamps, return_inverse=True)
    query_rank = np.searchsorted(distinct_times, request_time[request_of_row], side="left")
    item_count, item_positives, item_first = counts_before(
        np.asarray(log.item_ids, np.int64), time_rank.astype(np.int64), query_rank.astype(np.int64), actions)
    counts.append(item_count)
    positives.append(item_positives)
    # the user over earlier requests: rows user_start .. request start (rows are per user, in time order)
    cumulative = np.zeros((num_rows + 1, actions.shape[1]), np.int64)
    np.cumsum(actions, axis=0, out=cumulative[1:])
    begin, end = user_start[request_of_row], starts[:-1][request_of_row]
    counts.append(end - begin)
    positives.append(cumulative[end] - cumulative[begin])
    # the user on this item's value of each side feature, over earlier requests
    row = np.arange(num_rows, dtype=np.int64)
    for f in range(len(spec.side_vocab_sizes)):
        value = np.asarray(dataset.catalog.side_features[log.item_ids, f], np.int64)
        pair = users[request_of_row].astype(np.int64) * spec.side_vocab_sizes[f] + value
        _, pair_code = np.unique(pair, return_inverse=True)
        count, positive, _ = counts_before(pair_code.astype(np.int64), row, end.astype(np.int64), actions)
        counts.append(count)
        positives.append(positive)
    hour = 3600.0
    item_age = np.where(item_count > 0, (request_time[request_of_row] - log.timestamps[item_first]) / hour, -1.0)
    previous = np.full(log.num_requests, -1.0)
    previous[1:] = np.where(first_of_user[1:], -1.0, (request_time[1:] - request_time[:-1]) / hour)
    return (np.stack(counts, 1), np.stack(positives, 1), item_age, previous[request_of_row],
            train_rows)


def aggregate_columns(counts, positives, item_age_hours, hours_since_previous, prior,
                      smoothing: float = SMOOTHING) -> np.ndarray:
    """[E, K] float64 unstandardized aggregates from a feature store's counts: the one statement of
    the formula, used by training and by serving alike.

    counts: [E, G] earlier exposures per key group (G = 2 + side features: the item, the user, the
    user on each side feature's value); positives: [E, G, A] how many of those had each action;
    item_age_hours: [E] hours since the item was first shown (< 0: never shown);
    hours_since_previous: [E] hours since the user's previous request (< 0: none);
    prior: [A] the actions' train rates, in (0, 1).
    """
    counts = np.asarray(counts, np.float64)
    positives = np.asarray(positives, np.float64)
    rate = (positives + smoothing * np.asarray(prior, np.float64)) / (counts[..., None] + smoothing)
    rates = (np.log(rate) - np.log1p(-rate)).reshape(len(counts), -1)  # [E, G * A]: group-major, as the names
    age = np.asarray(item_age_hours, np.float64)
    since = np.asarray(hours_since_previous, np.float64)
    return np.concatenate([rates, np.log1p(counts), np.log1p(np.maximum(age, 0.0))[:, None],
                           np.where(since >= 0, np.log1p(np.maximum(since, 0.0)), 0.0)[:, None]], axis=1)


@dataclasses.dataclass(frozen=True)
class AggregateScaling:
    """What turns counts into a model's aggregate inputs, fixed by its training data: the actions'
    train rates (the smoothing's prior) and each column's train mean and deviation. Saved with a
    run (`aggregates.json`) and an export, so serving feeds exactly what training did."""

    names: tuple[str, ...]
    prior: np.ndarray  # [A]
    mean: np.ndarray  # [K]
    deviation: np.ndarray  # [K], 1 where the train rows' deviation is 0
    smoothing: float = SMOOTHING

    def standardize(self, table) -> np.ndarray:
        """[E, K] float32: unstandardized columns (`aggregate_columns`) as the model reads them."""
        table = np.asarray(table, np.float64)
        if table.ndim < 1 or table.shape[-1] != len(self.names):
            raise ValueError(f"aggregate tables have {len(self.names)} columns ({', '.join(self.names[:3])}, ...), "
                             f"got shape {table.shape}")
        return ((table - self.mean) / self.deviation).astype(np.float32)

    def transform(self, counts, positives, item_age_hours, hours_since_previous) -> np.ndarray:
        """[E, K] float32 model inputs from a feature store's counts (arguments: `aggregate_columns`)."""
        return self.standardize(aggregate_columns(counts, positives, item_age_hours, hours_since_previous,
                                                  self.prior, self.smoothing))

    def to_dict(self) -> dict:
        return {"names": list(self.names), "smoothing": self.smoothing, "prior": self.prior.tolist(),
                "mean": self.mean.tolist(), "deviation": self.deviation.tolist()}

    def save(self, path) -> None:
        pathlib.Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path) -> "AggregateScaling":
        try:
            return cls.from_dict(json.loads(pathlib.Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a readable aggregate scaling: {type(error).__name__}: {error}") from error

    @classmethod
    def from_dict(cls, values: dict) -> "AggregateScaling":
        names = tuple(values["names"])
        arrays = {key: np.asarray(values[key], np.float64) for key in ("prior", "mean", "deviation")}
        if arrays["mean"].shape != (len(names),) or arrays["deviation"].shape != (len(names),):
            raise ValueError(f"an aggregate scaling of {len(names)} columns needs {len(names)} means and deviations")
        return cls(names=names, smoothing=float(values["smoothing"]), **arrays)


def aggregate_scaling(dataset: RankingDataset) -> AggregateScaling:
    """The scaling `aggregate_features(dataset)` standardizes with (its train rows')."""
    return _features_and_scaling(dataset, None)[1]


def fit_aggregates(dataset: RankingDataset) -> tuple[np.ndarray, AggregateScaling]:
    """`aggregate_features(dataset)` and `aggregate_scaling(dataset)` in one pass (what training
    reads, and what it saves for serving)."""
    table, scaling = _features_and_scaling(dataset, None)
    return scaling.standardize(table), scaling


def aggregate_features(dataset: RankingDataset, *, standardize: bool = True,
                       scaling: AggregateScaling | None = None) -> np.ndarray:
    """[E, K] float32 per-exposure aggregates (columns: `aggregate_names(dataset.spec)`).

    scaling: the prior and standardization of another dataset (a trained model's); default this
    dataset's train rows'. standardize=False: the unstandardized columns (with that prior)."""
    table, fitted = _features_and_scaling(dataset, scaling)
    return fitted.standardize(table) if standardize else table.astype(np.float32)


def _features_and_scaling(dataset, scaling):
    counts, positives, item_age, since_previous, train_rows = _counts_of(dataset)
    actions = np.asarray(dataset.interactions.actions, np.int64)
    prior = scaling.prior if scaling is not None else (actions[train_rows].sum(0) + 1.0) / (len(train_rows) + 2.0)
    table = aggregate_columns(counts, positives, item_age, since_previous, prior)  # prior: [A], never 0 or 1
    assert table.shape[1] == num_aggregates(dataset.spec)
    if scaling is None:
        deviation = table[train_rows].std(0)
        scaling = AggregateScaling(names=aggregate_names(dataset.spec), prior=np.asarray(prior),
                                   mean=table[train_rows].mean(0), deviation=np.where(deviation > 0, deviation, 1.0))
    elif len(scaling.names) != table.shape[1]:
        raise ValueError(f"the aggregate scaling has {len(scaling.names)} columns, this dataset's aggregates "
                         f"{table.shape[1]}: it was fitted on data with other actions or side features")
    return table, scaling
