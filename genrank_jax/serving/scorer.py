"""Compiled serving for one model: fixed-size candidate micro-batches, packed across requests.

`Scorer.score_requests(cache, requests)` takes one request per cached user, each with any number
of candidates, and packs them M-FALCON style: every request's candidates are cut into rows of
`candidates_per_row` slots (a request of M candidates takes ceil(M / candidates_per_row) rows,
all pointing at that user's cache row), and rows are grouped into micro-batches of
`rows_per_batch`. Every micro-batch has the same shape, so scoring compiles once per cache shape
(users, capacity) whatever the request sizes.

Padding: the last row of a request holds NO_ITEM past its candidates; the last micro-batch is
filled with empty rows (user 0, no candidates). Padded slots are computed and dropped; a request
of M candidates costs ceil(M / candidates_per_row) * candidates_per_row slots.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genrank_jax.data.aggregates import num_aggregates
from genrank_jax.data.tokens import NO_ITEM
from genrank_jax.serving import history_cache
from genrank_jax.serving.history_cache import Candidates, History, HistoryCache, ServingError


@dataclasses.dataclass(frozen=True)
class Request:
    """One user's candidates: item_ids [M] and optional side [M, F], content [M, C], slot [M];
    aggregates [M, K], required by a model with use_aggregates (each candidate's aggregate features
    at this request: `AggregateScaling.transform` of a feature store's counts).

    request_index, gap_bucket and request_time (on the history's clock) describe the request, as
    the full pass gives them to its candidate tokens.
    """
    item_ids: np.ndarray
    side: np.ndarray | None = None
    content: np.ndarray | None = None
    slot: np.ndarray | None = None
    request_index: int = 0
    gap_bucket: int = 0
    request_time: float = 0.0
    aggregates: np.ndarray | None = None


def requests_from(candidates: Candidates) -> list[Request]:
    """The rows of a padded `Candidates` as one `Request` each."""
    counts = np.asarray(candidates.num_candidates)
    return [Request(item_ids=np.asarray(candidates.item_ids)[b, :m], side=np.asarray(candidates.side)[b, :m],
                    content=np.asarray(candidates.content)[b, :m], slot=np.asarray(candidates.slot)[b, :m],
                    request_index=int(np.asarray(candidates.request_index)[b]),
                    gap_bucket=int(np.asarray(candidates.gap_bucket)[b]),
                    request_time=float(np.asarray(candidates.request_time)[b]),
                    aggregates=None if candidates.aggregates is None else np.asarray(candidates.aggregates)[b, :m])
            for b, m in enumerate(counts)]


def _rows_of(cache: HistoryCache, users):
    """The cache of users `users` [R] (rows may repeat); the model fingerprint is shared."""
    per_user = dataclasses.replace(cache, model_tag=None)
    gathered = jax.tree.map(lambda x: jnp.take(x, users, axis=0), per_user)
    return dataclasses.replace(gathered, model_tag=cache.model_tag)


class Scorer:
    """encode / append / score_requests for one model, compiled once per shape."""

    def __init__(self, model, *, rows_per_batch: int = 8, candidates_per_row: int = 64, impl: str | None = None):
        if rows_per_batch < 1 or candidates_per_row < 1:
            raise ValueError(f"need rows_per_batch >= 1 and candidates_per_row >= 1, got {rows_per_batch}, "
                             f"{candidates_per_row}")
        self.config = model.config
        self._aggregate_width = num_aggregates(model.config.features) if model.config.use_aggregates else 0
        self.rows_per_batch, self.candidates_per_row = rows_per_batch, candidates_per_row
        self.tag = history_cache.model_tag(model)
        graphdef, self.state = nnx.split(model)
        tag = self.tag

        def encode(state, history, num_candidates, capacity):
            return history_cache.encode_history(nnx.merge(graphdef, state), history,
                                                num_candidates=num_candidates, capacity=capacity, tag=tag)

        def append(state, cache, new):
            return history_cache.append(nnx.merge(graphdef, state), cache, new, tag=tag)

        def score_rows(state, cache, users, candidates):
            # Python runs here only when jit traces, i.e. for a shape it has no compiled program for yet.
            # (jit's own _cache_size() read 0 after some earlier tests in one process: not a reliable count.)
            self._score_traces += 1
            return history_cache.score(nnx.merge(graphdef, state), _rows_of(cache, users), candidates, impl=impl,
                                       tag=tag)

        self._encode = jax.jit(encode, static_argnames="capacity")
        self._append = jax.jit(append)
        self._score_rows = jax.jit(score_rows)
        self._score_traces = 0

    def compilations(self) -> int:
        """How many shapes the micro-batch scoring function has been compiled for."""
        return self._score_traces

    def encode(self, history: History, *, num_candidates=None, capacity: int | None = None) -> HistoryCache:
        """`GenRank.encode_history`, compiled (inputs checked on the host first)."""
        capacity = history.item_ids.shape[1] if capacity is None else int(capacity)
        history_cache.check_history(self.config, history, capacity)
        if self.config.block == "hstu" and num_candidates is None:
            raise ServingError("HSTU blocks divide attention by the sample's whole token count, so encoding needs "
                               "num_candidates (the request's candidate count per user)")
        counts = jnp.zeros(np.shape(history.lengths), jnp.int32) if num_candidates is None else jnp.asarray(
            num_candidates, jnp.int32)
        return self._encode(self.state, history, counts, capacity)

    def append(self, cache: HistoryCache, new: History) -> HistoryCache:
        """`HistoryCache.append`, compiled."""
        history_cache.check_model(cache, self.tag)
        if self.config.block != "hstu":  # HSTU raises inside; the length checks need concrete arrays
            history_cache.check_history(self.config, new, new.item_ids.shape[1])
            total = np.asarray(cache.lengths) + np.asarray(new.lengths)
            if total.max(initial=0) > min(cache.capacity, self.config.max_tokens - 1):
                raise ServingError(f"appending gives a history of {int(total.max())} tokens; the cache holds "
                                   f"{cache.capacity} and the model's positions cover {self.config.max_tokens - 1}")
        return self._append(self.state, cache, new)

    def score(self, cache: HistoryCache, candidates: Candidates):
        """`GenRank.score` compiled: [B, M, A] for candidates aligned with the cache's users.

        Compiles once per candidate shape; `score_requests` is the fixed-shape path for serving.
        """
        history_cache.check_model(cache, self.tag)
        history_cache.check_users(self.config, cache.user_ids, "the cache's user_ids")
        history_cache.check_candidates(self.config, candidates)
        users = jnp.arange(cache.batch_size, dtype=jnp.int32)
        return self._score_rows(self.state, cache, users, candidates)

    def _pack(self, cache: HistoryCache, requests: Sequence[Request | None]):
        """(users [R], Candidates [R, m], where: list of (request, row, count)) over all requests."""
        features = self.config.features
        if len(requests) != cache.batch_size:
            raise ServingError(f"{len(requests)} requests for a cache of {cache.batch_size} users (one request per "
                               "cached user; None for a user without one)")
        m = self.candidates_per_row
        hstu_counts = np.asarray(cache.normalizer) - np.asarray(cache.lengths)
        users, where, rows = [], [], []
        for b, request in enumerate(requests):
            if request is None:
                continue
            ids = np.asarray(request.item_ids).reshape(-1)
            if ids.size == 0:
                raise ServingError(f"request {b} has an empty candidate list: nothing to score")
            unknown = ids[(ids < 0) | (ids >= features.num_items)]
            if unknown.size:
                raise ServingError(f"request {b} holds {unknown.size} unknown item id(s) (the model knows "
                                   f"0..{features.num_items - 1}): {np.unique(unknown)[:10].tolist()}")
            if self.config.block == "hstu" and ids.size != hstu_counts[b]:
                raise ServingError(f"request {b} has {ids.size} candidates but its cache was encoded for "
                                   f"{hstu_counts[b]} (HSTU attention divides by history + candidates)")
            fields = dict(
                side=(np.zeros((ids.size, len(features.side_vocab_sizes)), np.int32) if request.side is None
                      else request.side),
                content=(np.zeros((ids.size, features.content_dim), np.float32) if request.content is None
                         else request.content),
                slot=np.zeros(ids.size, np.int32) if request.slot is None else request.slot)
            if self.config.use_aggregates:
                if request.aggregates is None:
                    raise ServingError(f"request {b} has no aggregates: this model reads {self._aggregate_width} "
                                       "aggregate features per candidate (use_aggregates)")
                if np.shape(request.aggregates) != (ids.size, self._aggregate_width):
                    raise ServingError(f"request {b}: aggregates must be [{ids.size}, {self._aggregate_width}] "
                                       f"(one row per candidate), got shape {np.shape(request.aggregates)}")
                fields["aggregates"] = request.aggregates
            for field, width in (("side", len(features.side_vocab_sizes)), ("content", features.content_dim)):
                if np.shape(fields[field]) != (ids.size, width):
                    raise ServingError(f"request {b}: {field} must be [{ids.size}, {width}] (one row of {width} per "
                                       f"candidate, as the model was trained), got shape {np.shape(fields[field])}")
            history_cache.check_features(self.config, f"request {b}", np.asarray(fields["side"])[None],
                                         np.asarray(fields["content"])[None], (1, ids.size),
                                         np.ones((1, ids.size), bool))
            for start in range(0, ids.size, m):
                count = min(m, ids.size - start)
                part = slice(start, start + count)
                rows.append((ids[part], {k: np.asarray(v)[part] for k, v in fields.items()}, request))
                users.append(b)
                where.append((b, start, count))
        return users, rows, where

    def _micro_batch(self, users, rows):
        features, m = self.config.features, self.candidates_per_row
        size = self.rows_per_batch
        item_ids = np.full((size, m), NO_ITEM, np.int32)
        side = np.zeros((size, m, len(features.side_vocab_sizes)), np.int32)
        content = np.zeros((size, m, features.content_dim), np.float32)
        slot = np.zeros((size, m), np.int32)
        aggregates = np.zeros((size, m, self._aggregate_width), np.float32) if self.config.use_aggregates else None
        counts = np.zeros(size, np.int32)
        request_index, gap_bucket, request_time = (np.zeros(size, np.int32), np.zeros(size, np.int32),
                                                   np.zeros(size, np.float32))
        for r, (ids, fields, request) in enumerate(rows):
            n = ids.size
            item_ids[r, :n], side[r, :n] = ids, fields["side"]
            content[r, :n], slot[r, :n] = fields["content"], fields["slot"]
            if aggregates is not None:
                aggregates[r, :n] = fields["aggregates"]
            counts[r] = n
            request_index[r], gap_bucket[r], request_time[r] = (request.request_index, request.gap_bucket,
                                                                request.request_time)
        padded_users = np.zeros(size, np.int32)
        padded_users[:len(users)] = users
        return padded_users, Candidates(item_ids=item_ids, side=side, content=content, slot=slot,
                                        num_candidates=counts, request_index=request_index,
                                        gap_bucket=gap_bucket, request_time=request_time, aggregates=aggregates)

    def score_requests(self, cache: HistoryCache, requests: Sequence[Request | None]) -> list[np.ndarray | None]:
        """[M_b, A] float32 logits per request (None where the request is None), in micro-batches."""
        history_cache.check_model(cache, self.tag)
        history_cache.check_users(self.config, cache.user_ids, "the cache's user_ids")
        users, rows, where = self._pack(cache, requests)
        size = self.rows_per_batch
        pending = []
        for start in range(0, len(rows), size):
            batch_users, candidates = self._micro_batch(users[start:start + size], rows[start:start + size])
            pending.append(self._score_rows(self.state, cache, jnp.asarray(batch_users), candidates))
        logits = np.concatenate([np.asarray(p) for p in pending]) if pending else None
        out = [None if r is None else np.zeros((np.size(r.item_ids), self.config.features.num_actions), np.float32)
               for r in requests]
        for row, (b, start, count) in enumerate(where):
            out[b][start:start + count] = logits[row, :count]
        return out


__all__ = ["Request", "Scorer", "requests_from"]
