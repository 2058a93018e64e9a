"""The `features` reference of the LIS report: the production baseline, fitted on the probes' rows.

A logistic regression per task on point-in-time aggregates of the interaction log, the same
formula as the `features` ranker's (`genrank_jax.data.aggregates`): per task the item's and the
user's smoothed rates and their counts, the item's age and the time since the user's previous
interaction. The log has no item side features, so the user-on-side-feature columns of the
dataset version are absent. It trains on the probes' train rows and scores their eval rows, so a
reader can tell whether the probes are competent rankers: a LIS measured with a probe weaker than
this handful of counts in a logistic regression is a weak bound.

Point in time: row s counts for row r when s is *known* before r is *asked*: with `request`
given, when the last row of s's request is strictly earlier than the first row of r's (rows of
one request never see each other, and a request spanning r's time is not seen); without it, when
s's timestamp is strictly earlier. Rows of the eval window count for later eval rows, as they do
in the probes' histories (a feature store is updated as the day goes on); a row's own label never
counts, nor anything at or after its time.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.special

from genrank_jax.data.aggregates import AggregateScaling, aggregate_columns, counts_before
from genrank_jax.leakage.log import InteractionLog

NAME = "features"  # the report row's name, that of the ranker it stands for (`--architecture features`)
L2 = 1e-4  # per row (the loss is a mean): keeps a task with separable or one-class train rows finite
HOUR = 3600.0


@dataclasses.dataclass(frozen=True)
class LogCounts:
    """Per row of a log, what was known before it (see the module docstring): counts [N, 2] (the
    item's earlier rows, the user's), positives [N, 2, T], item_age_hours [N] (since the item's
    first known row; < 0: none), hours_since_previous [N] (since the user's latest; < 0: none)."""

    counts: np.ndarray
    positives: np.ndarray
    item_age_hours: np.ndarray
    hours_since_previous: np.ndarray

    def take(self, rows) -> "LogCounts":
        return LogCounts(*(getattr(self, f.name)[rows] for f in dataclasses.fields(self)))


def column_names(task_names) -> tuple[str, ...]:
    """Names of the reference's columns, in `aggregate_columns`' order."""
    rates = tuple(f"{key}_{task}_rate" for key in ("item", "user") for task in task_names)
    return rates + ("item_count", "user_count", "item_age_hours", "hours_since_previous_interaction")


def _moments(log: InteractionLog) -> tuple[np.ndarray, np.ndarray]:
    """(known [N], asked [N]) seconds: when a row's outcome is known, when it is scored."""
    if log.request is None:
        return log.timestamp, log.timestamp
    _, request = np.unique(log.request, return_inverse=True)
    last = np.full(request.max(initial=-1) + 1, -np.inf)
    first = np.full(len(last), np.inf)
    np.maximum.at(last, request, log.timestamp)
    np.minimum.at(first, request, log.timestamp)
    return last[request], first[request]


def _latest_before(keys: np.ndarray, order_value: np.ndarray, query_value: np.ndarray) -> np.ndarray:
    """Per row r: the largest order_value[s] < query_value[r] with keys[s] == keys[r], or -1 (the
    counterpart of `counts_before`'s first; same encoding of dense int64 codes and ranks)."""
    span = int(max(order_value.max(initial=0), query_value.max(initial=0))) + 2
    composite = np.sort(keys * span + order_value)
    before = np.searchsorted(composite, keys * span + query_value, side="left")
    found = before > np.searchsorted(composite, keys * span, side="left")
    return np.where(found, composite[np.maximum(before - 1, 0)] - keys * span, -1)


def log_counts(log: InteractionLog) -> LogCounts:
    """Point-in-time counts of every row of `log`, vectorized (sorts, no loop over rows)."""
    known, asked = _moments(log)
    times, ranks = np.unique(np.concatenate([known, asked]), return_inverse=True)
    known_rank, asked_rank = ranks[:log.num_rows].astype(np.int64), ranks[log.num_rows:].astype(np.int64)
    labels = log.labels.astype(np.int64)
    item_count, item_positives, item_first = counts_before(log.item, known_rank, asked_rank, labels)
    user_count, user_positives, _ = counts_before(log.user, known_rank, asked_rank, labels)
    # counts_before's first is the item's earliest known row overall: counted whenever any row is
    item_age = np.where(item_count > 0, (asked - known[item_first]) / HOUR, -1.0)
    latest = _latest_before(log.user, known_rank, asked_rank)
    since = np.where(latest >= 0, (asked - times[np.maximum(latest, 0)]) / HOUR, -1.0)
    return LogCounts(np.stack([item_count, user_count], 1), np.stack([item_positives, user_positives], 1),
                     item_age, since)


def reference_scaling(log: InteractionLog, counts: LogCounts, train_rows) -> AggregateScaling:
    """The prior (each task's train rate, add-one smoothed: never 0 or 1) and the train rows'
    column means and deviations, as `aggregate_features` fixes them for a dataset."""
    train_rows = np.asarray(train_rows, np.int64)
    prior = (log.labels[train_rows].sum(0, dtype=np.float64) + 1.0) / (len(train_rows) + 2.0)
    train = counts.take(train_rows)
    table = aggregate_columns(train.counts, train.positives, train.item_age_hours, train.hours_since_previous, prior)
    deviation = table.std(0)
    return AggregateScaling(names=column_names(log.task_names), prior=prior, mean=table.mean(0),
                            deviation=np.where(deviation > 0, deviation, 1.0))


def fit_logistic(x, y, *, offset: float = 0.0, l2: float = L2, iterations: int = 50) -> np.ndarray:
    """[K + 1] (intercept, weights) minimizing mean log loss of sigmoid(offset + b + x.w) plus
    l2 / 2 * (b^2 + |w|^2): Newton steps, halved while the objective does not decrease.

    The offset (the task's prior log-odds) puts the penalized intercept's zero at the base rate,
    so the penalty shrinks towards it, not towards 1/2. Deterministic; the objective is strictly
    convex, so the optimum is unique and Newton reaches it in a few steps."""
    x = np.concatenate([np.ones((len(x), 1)), np.asarray(x, np.float64)], axis=1)
    y = np.asarray(y, np.float64)
    rows = max(len(y), 1)

    def objective(theta):
        z = offset + x @ theta
        return float((np.logaddexp(0.0, z) - y * z).sum() / rows + 0.5 * l2 * theta @ theta)

    theta = np.zeros(x.shape[1])
    value = objective(theta)
    for _ in range(iterations):
        p = scipy.special.expit(offset + x @ theta)
        gradient = x.T @ (p - y) / rows + l2 * theta
        hessian = (x.T * (p * (1.0 - p))) @ x / rows + l2 * np.eye(x.shape[1])
        step = np.linalg.solve(hessian, gradient)
        if gradient @ step < 1e-18:  # the Newton decrement: what is left to gain is below rounding
            break
        scale = 1.0
        while (candidate := objective(theta - scale * step)) > value:
            scale /= 2
            if scale < 1e-6:  # no decrease along a Newton direction: the optimum up to rounding
                return theta
        theta, value = theta - scale * step, candidate
    return theta


def reference_logits(log: InteractionLog, train_rows, eval_rows, *, l2: float = L2) -> np.ndarray:
    """[Ne, T] float64 eval logits of the reference fitted on the train rows (see the module)."""
    train_rows, eval_rows = np.asarray(train_rows, np.int64), np.asarray(eval_rows, np.int64)
    if len(train_rows) == 0:
        raise ValueError("no training rows before the cutoff")
    counts = log_counts(log)
    scaling = reference_scaling(log, counts, train_rows)

    def inputs(rows):
        part = counts.take(rows)
        return scaling.transform(part.counts, part.positives, part.item_age_hours, part.hours_since_previous)

    train, evaluated = inputs(train_rows), inputs(eval_rows)
    offsets = np.log(scaling.prior) - np.log1p(-scaling.prior)
    logits = np.empty((len(eval_rows), log.num_tasks))
    for task in range(log.num_tasks):
        theta = fit_logistic(train, log.labels[train_rows, task], offset=offsets[task], l2=l2)
        logits[:, task] = offsets[task] + theta[0] + evaluated @ theta[1:]
    return logits
