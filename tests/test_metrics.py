"""Metrics against brute-force pairwise counts on random data with ties."""

import numpy as np
import pytest

from genrank_jax import metrics


def pairwise_auc(labels, scores):
    positives = scores[labels == 1]
    negatives = scores[labels == 0]
    wins = (positives[:, None] > negatives[None, :]).sum() + 0.5 * (positives[:, None] == negatives[None, :]).sum()
    return wins / (len(positives) * len(negatives))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = rng.integers(0, 12, 300).astype(float)  # many ties
    assert metrics.auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores), abs=1e-12)


def test_auc_edge_cases():
    assert np.isnan(metrics.auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert metrics.auc([0, 1], [0.0, 1.0]) == 1.0
    assert metrics.auc([0, 1], [1.0, 0.0]) == 0.0
    assert metrics.auc([0, 1], [0.5, 0.5]) == 0.5
    with pytest.raises(ValueError, match="NaN"):
        metrics.auc([0, 1], [np.nan, 1.0])


def test_gauc_weights_groups_by_impressions_and_skips_single_class():
    rng = np.random.default_rng(7)
    groups = rng.integers(0, 20, 500)
    labels = rng.integers(0, 2, 500)
    labels[groups == 3] = 1  # single-class user: skipped
    scores = rng.normal(size=500) + labels
    total = weight = 0.0
    for g in np.unique(groups):
        in_group = groups == g
        if labels[in_group].min() == labels[in_group].max():
            continue
        total += pairwise_auc(labels[in_group], scores[in_group]) * in_group.sum()
        weight += in_group.sum()
    assert metrics.gauc(labels, scores, groups) == pytest.approx(total / weight, abs=1e-12)


def test_log_loss_and_task_table():
    labels = np.array([[1, 0], [0, 0], [1, 1]])
    logits = np.array([[2.0, -1.0], [-1.0, -2.0], [0.5, 3.0]])
    table = metrics.task_metrics(labels, logits, users=np.array([0, 0, 1]), task_names=["click", "like"])
    p = 1 / (1 + np.exp(-logits[:, 0]))
    want = -np.mean(labels[:, 0] * np.log(p) + (1 - labels[:, 0]) * np.log(1 - p))
    assert table["click"]["logloss"] == pytest.approx(want)
    assert table["click"]["auc"] == 1.0
