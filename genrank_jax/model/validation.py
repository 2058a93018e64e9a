"""Checks of a token batch against a model's vocabularies, with errors that name the problem."""

from __future__ import annotations

import numpy as np

from genrank_jax.data.aggregates import num_aggregates
from genrank_jax.data.tokens import TokenBatch, TokenKind
from genrank_jax.errors import GenRankError
from genrank_jax.model.config import GenRankConfig


class BatchError(GenRankError, ValueError):
    """A batch a model cannot take; the message names the field and the offending row."""


def _expect(name, array, shape, kind):
    if array.shape != shape:
        raise BatchError(f"{name} must have shape {shape}, got {array.shape}")
    if np.dtype(array.dtype).kind not in kind:
        raise BatchError(f"{name} must have a dtype of kind {kind!r}, got {array.dtype}")


def _first(bad: np.ndarray) -> str:
    """'row r, token t' of the first True in a [B] or [B, S, ...] mask."""
    index = np.argwhere(bad)[0]
    return f"row {index[0]}" + (f", token {index[1]}" if len(index) > 1 else "")


def _in_range(name, array, low, high, why=""):
    """Every value of an id array in [low, high) (high None: no upper bound)."""
    array = np.asarray(array)
    bad = (array < low) | ((array >= high) if high is not None else False)
    if bad.any():
        where = _first(bad)
        value = array[tuple(np.argwhere(bad)[0])]
        upper = f"{high})" if high is not None else "inf)"
        raise BatchError(f"{name} {value} at {where} is outside [{low}, {upper}{why}")


def _finite(name, array):
    array = np.asarray(array)
    bad = ~np.isfinite(array)
    if bad.any():
        raise BatchError(f"{name} contain NaN or infinity (first at {_first(bad)})")


def validate_batch(batch: TokenBatch, config: GenRankConfig) -> None:
    """Raise BatchError on a wrong shape or dtype, an id outside its vocabulary (items, side features,
    users, token kinds, request index, gap bucket; negative positions or slots), labels outside
    {0, 1}, non-finite actions, content or timestamps, an empty history or a sample with no
    candidates. Padding rows (length 0) are allowed. (The model itself never turns an out-of-range
    id into NaN: see `genrank_jax.model.embeddings`; this check says which input is wrong.)"""
    features = config.features
    if batch.item_ids.ndim != 2:
        raise BatchError(f"item_ids must be [B, S], got shape {batch.item_ids.shape}")
    b, s = batch.item_ids.shape
    a, f, c = features.num_actions, len(features.side_vocab_sizes), features.content_dim
    _expect("item_ids", batch.item_ids, (b, s), "iu")
    for name in ("kinds", "positions", "request_index", "gap_bucket", "slot"):
        _expect(name, getattr(batch, name), (b, s), "iu")
    _expect("actions", batch.actions, (b, s, a), "f")
    _expect("labels", batch.labels, (b, s, a), "f")
    _expect("side", batch.side, (b, s, f), "iu")
    _expect("content", batch.content, (b, s, c), "f")
    _expect("timestamps", batch.timestamps, (b, s), "f")
    for name in ("user_ids", "lengths", "num_candidates"):
        _expect(name, getattr(batch, name), (b,), "iu")
    if config.reads_aggregates:
        if batch.aggregates is None:
            raise BatchError(f"a {config.architecture} model with use_aggregates={config.use_aggregates} reads "
                             "aggregate features, but the batch has none (SampleLayout(aggregates=True) builds them)")
        _expect("aggregates", batch.aggregates, (b, s, num_aggregates(features)), "f")
        if not np.isfinite(np.asarray(batch.aggregates)).all():
            raise BatchError("aggregate features are not finite")
    if batch.candidate_index.ndim != 2 or batch.candidate_index.shape[0] != b:
        raise BatchError(f"candidate_index must be [B, M] with B={b}, got {batch.candidate_index.shape}")
    if s > config.max_tokens:
        raise BatchError(f"sequences of {s} tokens exceed the model's max_tokens={config.max_tokens}")
    items = np.asarray(batch.item_ids)
    bad = (items >= features.num_items) | (items < -1)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise BatchError(f"item id {items[row, col]} at row {row}, token {col} is outside the vocabulary "
                         f"[0, {features.num_items})")
    for index, size in enumerate(features.side_vocab_sizes):
        _in_range(f"side feature {index} value", batch.side[..., index], 0, size)
    _in_range("token kind", batch.kinds, 0, len(TokenKind), f" (TokenKind: {', '.join(k.name for k in TokenKind)})")
    hashed = " (user ids are not hashed: num_user_buckets is unset)"
    _in_range("user id", batch.user_ids, 0, None if config.num_user_buckets else features.num_users,
              "" if config.num_user_buckets else hashed)
    _in_range("position", batch.positions, 0, None)
    _in_range("slot", batch.slot, 0, None)
    _in_range("request_index", batch.request_index, 0, config.num_request_slots)
    _in_range("gap_bucket", batch.gap_bucket, 0, config.num_gap_buckets)
    _in_range("candidate_index", batch.candidate_index, 0, s + 1)
    _finite("actions", batch.actions)
    _finite("content", batch.content)
    _finite("labels", batch.labels)
    labels = np.asarray(batch.labels)
    if ((labels != 0) & (labels != 1)).any():
        bad = (labels != 0) & (labels != 1)
        raise BatchError(f"labels must be 0 or 1, got {labels[tuple(np.argwhere(bad)[0])]} at {_first(bad)}")
    lengths = np.asarray(batch.lengths)
    candidates = np.asarray(batch.num_candidates)
    if (lengths < 0).any() or (lengths > s).any():
        raise BatchError(f"lengths must lie in [0, {s}], got {lengths.min()}..{lengths.max()}")
    live = lengths > 0
    if (live & (candidates <= 0)).any():
        row = int(np.flatnonzero(live & (candidates <= 0))[0])
        raise BatchError(f"row {row} has zero candidates: nothing to score")
    if (candidates > lengths).any():
        raise BatchError("num_candidates exceeds lengths in some row")
    history = (np.asarray(batch.kinds) == TokenKind.EXPOSURE) | (np.asarray(batch.kinds) == TokenKind.ITEM)
    empty = live & ~history.any(axis=1)
    if empty.any():
        raise BatchError(f"row {int(np.flatnonzero(empty)[0])} has an empty history: GenRank ranks from "
                         "behaviour; drop first requests (min_history=1) or give the user some history")
    _finite("timestamps", batch.timestamps)
