"""Ranking metrics: exact AUC (ties averaged), GAUC, log loss; per task.

AUC is the Mann-Whitney statistic from average ranks, so tied scores count one half, exactly as a
brute-force pairwise count does. Single-class inputs have no AUC (NaN).
"""

from __future__ import annotations

import numpy as np


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks of `scores`, ties given the mean of the ranks they span."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    # start index of each run of equal scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    run_rank = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1 .. end
    ranks = np.empty(len(scores), np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def auc(labels, scores) -> float:
    """Area under the ROC curve of binary `labels` [N] ranked by `scores` [N]; NaN if one class."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores must have the same shape, got {labels.shape} and {scores.shape}")
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    rank_sum = _average_ranks(scores)[labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def gauc(labels, scores, groups) -> float:
    """Per-group AUC weighted by the group's number of impressions; single-class groups skipped."""
    labels = np.asarray(labels).ravel()
    scores = np.asarray(scores, np.float64).ravel()
    groups = np.asarray(groups).ravel()
    order = np.argsort(groups, kind="stable")
    groups, labels, scores = groups[order], labels[order], scores[order]
    cuts = np.flatnonzero(np.diff(groups)) + 1
    total, weight = 0.0, 0
    for group_labels, group_scores in zip(np.split(labels, cuts), np.split(scores, cuts)):
        value = auc(group_labels, group_scores)
        if not np.isnan(value):
            total += value * len(group_labels)
            weight += len(group_labels)
    return total / weight if weight else float("nan")


def log_loss(labels, probabilities, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities against 0/1 labels."""
    labels = np.asarray(labels, np.float64).ravel()
    p = np.clip(np.asarray(probabilities, np.float64).ravel(), eps, 1 - eps)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def task_metrics(labels, scores, users, task_names, *, probabilities=None) -> dict[str, dict[str, float]]:
    """{task: {"auc", "gauc", "logloss", "positive_rate", "count"}} from labels/scores [N, A].

    `scores` are logits or any monotone score; `probabilities` (default sigmoid(scores)) feed log loss.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores, np.float64)
    if probabilities is None:
        probabilities = 1.0 / (1.0 + np.exp(-scores))
    results = {}
    for t, name in enumerate(task_names):
        results[name] = {
            "auc": auc(labels[:, t], scores[:, t]),
            "gauc": gauc(labels[:, t], scores[:, t], users),
            "logloss": log_loss(labels[:, t], probabilities[:, t]),
            "positive_rate": float(labels[:, t].mean()) if len(labels) else float("nan"),
            "count": int(len(labels)),
        }
    return results
