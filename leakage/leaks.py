"""Leak builders: features made from behaviour after the cutoff (the paper's leak types A, B, C).

Each builder reads no behaviour after `cutoff + horizon`; the leaked (future) part of what it
reads is exactly the window (cutoff, cutoff + horizon]. Per-item features are [num_items, d],
per-interaction features [N, d]; any of them goes into `leakage_impact(features=...)`.

Ids that a probe has to learn to use (the neighbours of B, the next item of C) are given as rows of
a fixed random Gaussian codebook [num_items, dim] (`item_codebook`): near-orthogonal item codes a
linear projection can read, the same width whatever the catalog size.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

from genrank_jax.leakage import bank
from genrank_jax.leakage.log import InteractionLog
from genrank_jax.leakage.probe import ProbeConfig
from genrank_jax.leakage.sequences import next_engaged


def item_codebook(num_items: int, dim: int, seed: int = 0) -> np.ndarray:
    """[num_items, dim] float32 random item codes with unit expected norm."""
    return (np.random.default_rng(seed).standard_normal((num_items, dim)) / np.sqrt(dim)).astype(np.float32)


def _check_window(cutoff: float, horizon: float) -> float:
    if not horizon > 0:
        raise ValueError(f"horizon must be positive seconds, got {horizon}")
    return float(cutoff) + float(horizon)


def future_item_embeddings(log: InteractionLog, cutoff: float, horizon: float, dim: int = 16, *,
                           probe: ProbeConfig | None = None, seed: int = 0,
                           window_only: bool = False) -> np.ndarray:
    """Type A: [num_items, dim] item-id embeddings of a ranker trained on data up to cutoff + horizon.

    The ranker is one probe (the same model the LIS probes use, at width `dim`). Following the
    paper it trains on everything up to cutoff + horizon, so the leak is what the window adds
    (future interest, late items, the eval labels inside the window); `window_only=True` trains on
    (cutoff, cutoff + horizon] alone.
    """
    end = _check_window(cutoff, horizon)
    rows = log.rows_between(cutoff if window_only else None, end, closed="right")
    if window_only:
        rows = rows[log.timestamp[rows] > cutoff]
    if len(rows) == 0:
        raise ValueError("no interactions to train the future ranker on")
    config = probe or ProbeConfig()
    config = ProbeConfig(**{**config.__dict__, "dim": dim, "model": "mlp"})  # the type-A ranker is an MLP probe
    run = bank.prepare_run(log, rows, np.zeros(0, np.int64), {}, config)
    states = bank.train(run, bank.init_bank(run, [seed], [0]))
    return np.asarray(states["tables"]["item"]["value"][0, :log.num_items], np.float32)


def cooccurrence_neighbors(log: InteractionLog, cutoff: float, horizon: float, k: int = 5, dim: int = 32, *,
                           seed: int = 0) -> np.ndarray:
    """Type B: [num_items, dim] each item's top-k co-engaged items in (cutoff, cutoff + horizon].

    Co-engagement: two items engaged by the same user within the window; similarity is the
    cosine of their user sets (posterior co-engagement, popularity-normalised). The feature of an
    item is the similarity-weighted mean of its k neighbours' codebook rows; items without any
    co-engaged item get zeros.
    """
    end = _check_window(cutoff, horizon)
    rows = log.rows_between(cutoff, end, closed="right")
    rows = rows[log.engaged()[rows]]
    feature = np.zeros((log.num_items, dim), np.float32)
    if len(rows) == 0:
        return feature
    engaged = scipy.sparse.csr_matrix((np.ones(len(rows), np.float32), (log.user[rows], log.item[rows])),
                                      shape=(log.num_users, log.num_items))
    engaged.data[:] = 1.0  # a user engaging twice with one item counts once
    counts = np.asarray(engaged.sum(axis=0)).ravel()
    co = (engaged.T @ engaged).tocsr()
    co.setdiag(0.0)
    co.eliminate_zeros()
    coo = co.tocoo()
    similarity = coo.data / np.sqrt(counts[coo.row] * counts[coo.col])
    # top-k per row: sort by (row, -similarity, column) and keep each row's first k entries
    order = np.lexsort((coo.col, -similarity, coo.row))
    row, col, similarity = coo.row[order], coo.col[order], similarity[order]
    first = np.searchsorted(row, row, side="left")
    keep = (np.arange(len(row)) - first) < k
    row, col, similarity = row[keep], col[keep], similarity[keep]
    codes = item_codebook(log.num_items, dim, seed)
    np.add.at(feature, row, similarity[:, None] * codes[col])
    total = np.bincount(row, similarity, log.num_items)
    nonzero = total > 0
    feature[nonzero] /= total[nonzero, None]
    return feature


def next_item(log: InteractionLog, cutoff: float, horizon: float, dim: int = 32, *, seed: int = 0,
              window_only: bool = False) -> np.ndarray:
    """Type C: [N, dim] the codebook row of the next item each row's user engaged with.

    "Next" is the user's first engagement strictly after the row's time and no later than
    cutoff + horizon; rows without one get zeros. For rows after the cutoff that engagement lies in
    the window: the leak. For training rows it is mostly ordinary pre-cutoff behaviour, which is
    what lets a probe learn to read the feature; `window_only=True` keeps only window engagements.
    """
    end = _check_window(cutoff, horizon)
    events = log.rows_between(cutoff if window_only else None, end, closed="right")
    if window_only:
        events = events[log.timestamp[events] > cutoff]
    events = events[log.engaged()[events]]
    following = next_engaged(log.user, log.timestamp, events)
    feature = np.zeros((log.num_rows, dim), np.float32)
    found = following >= 0
    feature[found] = item_codebook(log.num_items, dim, seed)[log.item[following[found]]]
    return feature


BUILDERS = {"future_item_embeddings": future_item_embeddings,
            "cooccurrence_neighbors": cooccurrence_neighbors,
            "next_item": next_item}
