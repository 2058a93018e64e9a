"""Serving: encode a history once, score candidates against its cached keys and values.

GenRank's mask lets every candidate see the whole history and itself, never another candidate,
and the history is causal. So a history's per-block keys and values (the `HistoryCache`) are all a
candidate needs: `score(cache, candidates)` runs only the candidate tokens through the blocks, each
attending to the cache and to itself (`kernels.cached_attention`), and equals the full forward pass
on history + candidates. `append` adds newly observed exposures without recomputing the rest.
All three run the model's one forward path, `GenRank.forward`, and differ only in how each block
attends (`_attend_history`, `_attend_cache`, `_attend_appended`): the blocks and heads are the
training pass's own code, not a copy.

The cache is an explicit pytree passed in and returned (functional, as Gemma's JAX code keeps its
cache); its shapes are fixed when it is created (`capacity` history tokens per user), so scoring
compiles once per (users, capacity, candidate slots). `Scorer` packs many requests' candidates
into fixed-size micro-batches (M-FALCON style), so request sizes never trigger recompilation.

Token conventions are `SampleBuilder`'s: history token i has position i (item-oriented histories
have two tokens per exposure), the candidates of a request share position = the history's token
count, and timestamps are seconds on one clock shared by the history and `request_time`.

HSTU blocks: their SiLU attention divides by the sample's whole token count (history + the
request's candidates; see docs/design.md, "The attention op"), so the history states of an HSTU model depend on
how many candidates the request has. `encode_history` takes that count (`num_candidates`) and the
cache keeps the divisor; the candidates of that request must then number exactly that many, and
`append` (which would change the divisor of every cached state) raises.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from genrank_jax.data.tokens import NO_ITEM, TokenBatch, TokenKind
from genrank_jax.errors import GenRankError
from genrank_jax.model import embeddings
from genrank_jax.typing import Array, Float

if TYPE_CHECKING:  # model imports this module
    from genrank_jax.model.config import GenRankConfig
    from genrank_jax.model.genrank import BlockAttention

CachedKeys = Float[Array, "B N H D"]
CachedValues = Float[Array, "B N H Dv"]
CandidateLogits = Float[Array, "B M A"]


class ServingError(GenRankError, ValueError):
    """Input that serving cannot score: unknown items or users, side features of the wrong width or out of
    vocabulary, no candidates, too long a history, a foreign cache."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class History:
    """History tokens of B users in time order, padded to N (numpy or jax arrays).

    user_ids: [B] int32              lengths: [B] int32 history tokens per user
    item_ids: [B, N] int32 (NO_ITEM on item-oriented action tokens and padding)
    kinds: [B, N] int8 TokenKind (EXPOSURE, or ITEM / ACTION tokens; PAD past `lengths`)
    actions: [B, N, A] float32    side: [B, N, F] int32    content: [B, N, C] float32
    request_index, gap_bucket, slot: [B, N] int32 (as in `TokenBatch`)
    timestamps: [B, N] float32 seconds on the serving clock
    aggregates: [B, N, K] float32 each exposure's aggregate features as of its own request (a model
      with use_aggregates only; `AggregateScaling.transform` makes them from a feature store's counts)
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    kinds: np.ndarray
    actions: np.ndarray
    side: np.ndarray
    content: np.ndarray
    request_index: np.ndarray
    gap_bucket: np.ndarray
    slot: np.ndarray
    timestamps: np.ndarray
    lengths: np.ndarray
    aggregates: np.ndarray | None = None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Candidates:
    """The candidates of one request per user, padded to M slots (NO_ITEM past `num_candidates`).

    item_ids: [B, M] int32   side: [B, M, F] int32   content: [B, M, C] float32   slot: [B, M] int32
    num_candidates: [B] int32
    request_index, gap_bucket: [B] int32 (the request's, as the full pass gives its candidates)
    request_time: [B] float32 the request's time on the history's clock
    aggregates: [B, M, K] float32 each candidate's aggregate features at this request (a model with
      use_aggregates only)
    """

    item_ids: np.ndarray
    side: np.ndarray
    content: np.ndarray
    slot: np.ndarray
    num_candidates: np.ndarray
    request_index: np.ndarray
    gap_bucket: np.ndarray
    request_time: np.ndarray
    aggregates: np.ndarray | None = None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class HistoryCache:
    """Per-block keys and values of B users' history tokens, with their positions and timestamps.

    keys: one [B, N, H, D] per block    values: one [B, N, H, Dv] per block (N = capacity)
    positions: [B, N] int32    timestamps: [B, N] float32    lengths: [B] int32 valid tokens
    user_ids: [B] int32
    normalizer: [B] int32 the HSTU SiLU divisor (history tokens + the request's candidates);
      equal to `lengths` for softmax blocks, which do not use it
    model_tag: [2] uint32 fingerprint of the model that encoded it (0, 0 when unknown: encoded
      under a trace), checked by `score` and `append`
    """

    keys: tuple
    values: tuple
    positions: np.ndarray
    timestamps: np.ndarray
    lengths: np.ndarray
    user_ids: np.ndarray
    normalizer: np.ndarray
    model_tag: np.ndarray

    @property
    def capacity(self) -> int:
        return self.positions.shape[1]

    @property
    def batch_size(self) -> int:
        return self.positions.shape[0]

    def append(self, new_exposures: History, *, model) -> "HistoryCache":
        """This cache extended by newly observed history tokens (with their actions), exactly.

        New token i of user b lands at row lengths[b] + i; the rest of the cache is not recomputed.
        The model must be the one that encoded the cache (softmax blocks only: see the module doc).
        """
        return append(model, self, new_exposures)


def split_batch(batch: TokenBatch) -> tuple[History, Candidates]:
    """A `TokenBatch` (one request per row, as `SampleBuilder` builds it) as serving inputs.

    Timestamps are already relative to each row's request, so `request_time` is 0.
    """
    kinds = np.asarray(batch.kinds)
    num_candidates = np.asarray(batch.num_candidates)
    history_lengths = np.asarray(batch.lengths) - num_candidates
    width = max(1, int(history_lengths.max()))
    index = np.asarray(batch.candidate_index)
    slots = np.arange(index.shape[1])[None, :] < num_candidates[:, None]
    safe = np.where(slots, index, 0)
    take = lambda a: np.take_along_axis(np.asarray(a), safe.reshape(safe.shape + (1,) * (np.ndim(a) - 2)), axis=1)
    in_history = np.arange(width)[None, :] < history_lengths[:, None]
    head = lambda a: np.asarray(a)[:, :width]
    history = History(
        user_ids=np.asarray(batch.user_ids), item_ids=np.where(in_history, head(batch.item_ids), NO_ITEM),
        kinds=np.where(in_history, head(kinds), TokenKind.PAD).astype(np.int8), actions=head(batch.actions),
        side=head(batch.side), content=head(batch.content), request_index=head(batch.request_index),
        gap_bucket=head(batch.gap_bucket), slot=head(batch.slot), timestamps=head(batch.timestamps),
        lengths=history_lengths.astype(np.int32),
        aggregates=None if batch.aggregates is None else head(batch.aggregates))
    first = np.minimum(np.asarray(batch.lengths) - num_candidates, batch.seq_len - 1)[:, None]
    at_first = lambda a: np.take_along_axis(np.asarray(a), first, axis=1)[:, 0]
    candidates = Candidates(
        item_ids=np.where(slots, take(batch.item_ids), NO_ITEM).astype(np.int32),
        side=np.where(slots[..., None], take(batch.side), 0).astype(np.int32),
        content=np.where(slots[..., None], take(batch.content), 0).astype(np.float32),
        slot=np.where(slots, take(batch.slot), 0).astype(np.int32), num_candidates=num_candidates.astype(np.int32),
        request_index=at_first(batch.request_index).astype(np.int32),
        gap_bucket=at_first(batch.gap_bucket).astype(np.int32),
        request_time=np.zeros(len(num_candidates), np.float32),
        aggregates=None if batch.aggregates is None else
        np.where(slots[..., None], take(batch.aggregates), 0).astype(np.float32))
    return history, candidates


# ---------------------------------------------------------------- checks (host side, concrete inputs)
# Public: `Scorer` runs them on the host before its jitted calls, where the arrays are tracers.

def _concrete(*arrays) -> bool:
    return not any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(arrays))


def model_tag(model) -> np.ndarray:
    """[2] uint32 fingerprint of a model's config and parameter values (0, 0 under a trace)."""
    from flax import nnx

    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    if not _concrete(params):
        return np.zeros(2, np.uint32)
    sums = jnp.stack([jnp.stack([jnp.sum(p.astype(jnp.float32)), jnp.sum(jnp.abs(p.astype(jnp.float32)))])
                      for p in params])
    config = zlib.crc32(model.config.to_json().encode())
    values = zlib.crc32(np.asarray(sums, np.float64).tobytes())
    return np.array([config or 1, values or 1], np.uint32)


def check_model(cache: HistoryCache, tag: np.ndarray) -> None:
    """Raise if `cache` was encoded by a model other than the one with fingerprint `tag`."""
    if not _concrete(cache.model_tag):
        return
    cached = np.asarray(cache.model_tag)
    if cached.any() and np.asarray(tag).any() and not np.array_equal(cached, tag):
        raise ServingError(f"this HistoryCache was encoded by another model (fingerprint {cached.tolist()}, this "
                           f"model's is {np.asarray(tag).tolist()}): encode the history with this model")


def _check_items(name: str, item_ids, valid, num_items: int) -> None:
    if not _concrete(item_ids, valid):
        return
    ids = np.asarray(item_ids)[np.asarray(valid)]
    unknown = ids[(ids < 0) | (ids >= num_items)]
    if unknown.size:
        raise ServingError(f"{name} hold {unknown.size} unknown item id(s) (the model knows 0..{num_items - 1}): "
                           f"{np.unique(unknown)[:10].tolist()}")


def check_users(config: GenRankConfig, user_ids, where: str) -> None:
    """Raise for user ids the model does not know (jitted code maps them to the zero unknown-user
    row, `embeddings.user_rows`; a concrete request is refused instead, as unknown items are)."""
    if not _concrete(user_ids) or not config.use_user_embedding:
        return
    ids = np.asarray(user_ids)
    unknown = ids[np.asarray(embeddings.user_rows(config, ids)) == embeddings.UNKNOWN_USER]
    if unknown.size:
        known = "any id >= 0 (hashed)" if config.num_user_buckets else f"0..{config.features.num_users - 1}"
        raise ServingError(f"{where} hold {unknown.size} unknown user id(s) (the model knows {known}): "
                           f"{np.unique(unknown)[:10].tolist()}")


def check_features(config: GenRankConfig, name: str, side, content, tokens: tuple, valid=None) -> None:
    """Side-feature and content widths (F, C) of the model for `tokens` (B, N), and side ids inside
    their vocabularies where `valid` [B, N] (a token that carries an item; None: not concrete).
    Widths are static, checked even under a trace: a narrower array would be read by index
    clamping (feature 1 reading feature 0)."""
    features = config.features
    for field, array, width in (("side", side, len(features.side_vocab_sizes)), ("content", content,
                                                                                  features.content_dim)):
        if np.ndim(array) != 3 or tuple(np.shape(array)) != (*tokens, width):
            raise ServingError(f"{name}.{field} must be [B, N, {width}] ({field} width {width}, as the model was "
                               f"trained) with B, N = {tuple(tokens)}, got shape {tuple(np.shape(array))}")
    if valid is None or not _concrete(side):
        return
    valid = np.asarray(valid)
    for f, size in enumerate(features.side_vocab_sizes):
        ids = np.asarray(side)[..., f][valid]
        unknown = ids[(ids < 0) | (ids >= size)]
        if unknown.size:
            raise ServingError(f"{name}.side feature {f} holds {unknown.size} unknown id(s) (its vocabulary is "
                               f"0..{size - 1}): {np.unique(unknown)[:10].tolist()}")


def check_aggregates(config: GenRankConfig, name: str, aggregates, tokens: tuple) -> None:
    """A model that reads aggregate features needs them as [B, N, K] for `tokens` (B, N); a model that
    does not ignores them. Static shapes: checked under a trace too."""
    if not config.use_aggregates:
        return
    from genrank_jax.data.aggregates import num_aggregates

    width = num_aggregates(config.features)
    if aggregates is None:
        raise ServingError(f"{name}.aggregates is missing: this model reads {width} aggregate features per token "
                           f"(use_aggregates); make them with the training run's AggregateScaling "
                           f"(aggregates.json) from your feature store's counts")
    if np.ndim(aggregates) != 3 or tuple(np.shape(aggregates)) != (*tokens, width):
        raise ServingError(f"{name}.aggregates must be [B, N, {width}] (the model's {width} aggregate features) "
                           f"with B, N = {tuple(tokens)}, got shape {tuple(np.shape(aggregates))}")


def check_history(config: GenRankConfig, history: History, capacity: int) -> None:
    """Raise for a history the model cannot encode into a cache of `capacity` tokens: unknown users
    or items, lengths outside the padded width, longer than the position table or the capacity, side
    features of the wrong width or out of vocabulary (only the widths under a trace)."""
    width = history.item_ids.shape[1]
    check_aggregates(config, "history", history.aggregates, history.item_ids.shape)
    if not _concrete(history):
        check_features(config, "history", history.side, history.content, history.item_ids.shape)
        return
    check_users(config, history.user_ids, "history user_ids")
    lengths = np.asarray(history.lengths)
    if (lengths < 0).any() or (lengths > width).any():
        raise ServingError(f"history lengths must lie in [0, {width}] (the padded width), got {lengths.tolist()}")
    longest = int(lengths.max(initial=0))
    # candidates take position `history tokens`, which the position table must still hold
    if longest > config.max_tokens - 1:
        raise ServingError(
            f"a history has {longest} tokens but the model's position table covers {config.max_tokens} "
            f"positions (history + the candidates' shared position): keep the most recent "
            f"{config.max_tokens - 1} tokens before encoding (SampleLayout(max_history=...) truncates so)")
    if longest > capacity:
        raise ServingError(f"a history has {longest} tokens but the cache capacity is {capacity}")
    in_history = np.arange(width)[None, :] < lengths[:, None]
    carries_item = in_history & (np.asarray(history.kinds) != TokenKind.ACTION)
    _check_items("history tokens", history.item_ids, carries_item, config.features.num_items)
    check_features(config, "history", history.side, history.content, history.item_ids.shape, carries_item)


def check_candidates(config: GenRankConfig, candidates: Candidates) -> None:
    """Raise for candidates the model cannot score: no slots or no candidates, counts outside the
    slots, unknown items, side features of the wrong width or out of vocabulary (only the shapes
    under a trace)."""
    if candidates.item_ids.shape[1] == 0:
        raise ServingError("the candidate list is empty (M = 0): nothing to score")
    check_aggregates(config, "candidates", candidates.aggregates, candidates.item_ids.shape)
    if not _concrete(candidates):
        check_features(config, "candidates", candidates.side, candidates.content, candidates.item_ids.shape)
        return
    counts = np.asarray(candidates.num_candidates)
    slots = candidates.item_ids.shape[1]
    if (counts < 0).any() or (counts > slots).any():
        raise ServingError(f"num_candidates must lie in [0, {slots}] (the candidate slots), got {counts.tolist()}")
    if not counts.any():
        raise ServingError("every candidate list is empty (num_candidates are all 0): nothing to score")
    valid = np.arange(slots)[None, :] < counts[:, None]
    _check_items("candidates", candidates.item_ids, valid, config.features.num_items)
    check_features(config, "candidates", candidates.side, candidates.content, candidates.item_ids.shape, valid)


# ---------------------------------------------------------------- the three operations

def _tokens(*, user_ids, item_ids, kinds, actions, side, content, positions, request_index, gap_bucket,
            slot, timestamps, lengths, aggregates=None):
    batch, width = item_ids.shape
    return TokenBatch(
        user_ids=user_ids, item_ids=item_ids, kinds=kinds, actions=actions, side=side, content=content,
        positions=positions, request_index=request_index, gap_bucket=gap_bucket, slot=slot,
        timestamps=timestamps, labels=jnp.zeros(actions.shape, jnp.float32), lengths=lengths,
        num_candidates=jnp.zeros((batch,), jnp.int32), candidate_index=jnp.zeros((batch, 1), jnp.int32),
        aggregates=aggregates)


def _history_tokens(history: History, positions):
    return _tokens(user_ids=jnp.asarray(history.user_ids, jnp.int32),
                   item_ids=jnp.asarray(history.item_ids, jnp.int32), kinds=jnp.asarray(history.kinds),
                   actions=jnp.asarray(history.actions, jnp.float32), side=jnp.asarray(history.side, jnp.int32),
                   content=jnp.asarray(history.content, jnp.float32), positions=positions,
                   request_index=jnp.asarray(history.request_index, jnp.int32),
                   gap_bucket=jnp.asarray(history.gap_bucket, jnp.int32), slot=jnp.asarray(history.slot, jnp.int32),
                   timestamps=jnp.asarray(history.timestamps, jnp.float32),
                   lengths=jnp.asarray(history.lengths, jnp.int32), aggregates=history.aggregates)


def _pad_to(x, axis: int, size: int, value=0):
    x = jnp.asarray(x)
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths, constant_values=value)


def _is_silu(model) -> bool:
    return model.config.block == "hstu"


def _attend_history(tokens: TokenBatch, normalizer, *, silu: bool) -> BlockAttention:
    """Encoding's attention: the causal history alone, whose rows equal the full pass's, and the
    block's keys and values as the cache keeps them."""
    # HSTU: the full pass divides by history + candidates, the op over the history alone by history
    rescale = (jnp.maximum(tokens.lengths, 1).astype(jnp.float32) / jnp.maximum(normalizer, 1).astype(jnp.float32)
               if silu else None)

    def attend(index: int, attention, q, k, v):
        attended = attention(q, k, v, tokens)
        if rescale is not None:
            attended = attended * rescale[:, None, None, None].astype(attended.dtype)
        return attended, k, v

    return attend


def encode_history(model, history: History, *, num_candidates=None, capacity: int | None = None,
                   tag: np.ndarray | None = None) -> HistoryCache:
    """The `HistoryCache` of `history` (capacity: history tokens it can hold, default the width N).

    num_candidates: [B] the request's candidate count, needed by HSTU blocks (module doc).
    """
    config = model.config
    if config.history_mask != "causal":
        # the cache holds each history token as the causal prefix left it; a fully visible history
        # changes every earlier token when one arrives, so no cache can serve it
        raise ServingError(f"a model with history_mask={config.history_mask!r} (a research ablation) cannot be "
                           "served from a history cache: only the causal history can")
    batch, width = history.item_ids.shape
    capacity = width if capacity is None else int(capacity)
    check_history(config, history, capacity)
    lengths = jnp.asarray(history.lengths, jnp.int32)
    if _is_silu(model):
        if num_candidates is None:
            raise ServingError("HSTU blocks divide attention by the sample's whole token count, so encoding needs "
                               "num_candidates (the request's candidate count per user)")
        normalizer = lengths + jnp.asarray(num_candidates, jnp.int32)
    else:
        normalizer = lengths
    if capacity > width:  # pad every per-token field to the capacity
        history = jax.tree.map(lambda a: _pad_to(a, 1, capacity) if np.ndim(a) >= 2 else jnp.asarray(a), history)
    positions = jnp.broadcast_to(jnp.arange(capacity, dtype=jnp.int32), (batch, capacity))
    tokens = _history_tokens(history, positions)
    encoded = model.forward(tokens, _attend_history(tokens, normalizer, silu=_is_silu(model)), with_logits=False)
    return HistoryCache(
        keys=encoded.keys, values=encoded.values, positions=positions, timestamps=tokens.timestamps,
        lengths=lengths, user_ids=tokens.user_ids, normalizer=normalizer.astype(jnp.int32),
        model_tag=jnp.asarray(model_tag(model) if tag is None else tag, jnp.uint32))


def _check_cache_shape(model, cache: HistoryCache) -> None:
    config = model.config
    if len(cache.keys) != config.num_blocks or cache.keys[0].shape[2:] != (config.num_heads, config.head_dim):
        raise ServingError(f"this HistoryCache holds {len(cache.keys)} blocks of keys {cache.keys[0].shape[2:]} "
                           f"(heads, head dim); the model has {config.num_blocks} blocks of "
                           f"{(config.num_heads, config.head_dim)}: it was encoded by another model")


def _attend_cache(cache: HistoryCache, tokens: TokenBatch, *, impl: str | None) -> BlockAttention:
    """Scoring's attention: candidate tokens against block i's cached history and themselves; the
    cache is left as it is."""
    def attend(index: int, attention, q, k, v):
        keys, values = cache.keys[index], cache.values[index]
        attended = attention.cached(
            q, k, v, keys, values, cache_lengths=cache.lengths, num_candidates=tokens.lengths,
            positions=tokens.positions, cache_positions=cache.positions, timestamps=tokens.timestamps,
            cache_timestamps=cache.timestamps, normalizer=cache.normalizer, impl=impl)
        return attended, keys, values

    return attend


def score(model, cache: HistoryCache, candidates: Candidates, *, impl: str | None = None,
          tag: np.ndarray | None = None) -> CandidateLogits:
    """[B, M, A] float32 logits of each user's candidates (0 past `num_candidates`).

    Candidate b of row m sees cache row b's history and itself. `impl`: the cached attention
    backend (None: the fastest for the device).
    """
    config = model.config
    _check_cache_shape(model, cache)
    check_model(cache, model_tag(model) if tag is None else tag)
    check_users(config, cache.user_ids, "the cache's user_ids")
    check_candidates(config, candidates)
    batch, slots = candidates.item_ids.shape
    if batch != cache.batch_size:
        raise ServingError(f"candidates are for {batch} users but the cache holds {cache.batch_size}")
    num_candidates = jnp.asarray(candidates.num_candidates, jnp.int32)
    valid = jnp.arange(slots)[None, :] < num_candidates[:, None]
    per_slot = lambda x, dtype: jnp.broadcast_to(jnp.asarray(x, dtype)[:, None], (batch, slots))
    positions = per_slot(cache.lengths, jnp.int32)
    tokens = _tokens(
        user_ids=cache.user_ids, item_ids=jnp.where(valid, jnp.asarray(candidates.item_ids, jnp.int32), NO_ITEM),
        kinds=jnp.where(valid, TokenKind.CANDIDATE, TokenKind.PAD).astype(jnp.int8),
        actions=jnp.zeros((batch, slots, config.features.num_actions), jnp.float32),
        side=jnp.asarray(candidates.side, jnp.int32), content=jnp.asarray(candidates.content, jnp.float32),
        positions=positions, request_index=per_slot(candidates.request_index, jnp.int32),
        gap_bucket=per_slot(candidates.gap_bucket, jnp.int32), slot=jnp.asarray(candidates.slot, jnp.int32),
        timestamps=per_slot(candidates.request_time, jnp.float32), lengths=num_candidates,
        aggregates=candidates.aggregates)  # read only by a model with use_aggregates
    logits = model.forward(tokens, _attend_cache(cache, tokens, impl=impl)).logits
    return jnp.where(valid[..., None], logits, 0.0)


def _attend_appended(cache: HistoryCache, whole: TokenBatch, rows,
                     scatter: Callable[[jax.Array, jax.Array], jax.Array]) -> BlockAttention:
    """Append's attention: the new tokens' keys and values scattered into block i's cache at
    `rows` [B, W], and the new rows of the full causal op over the extended history (`whole`)."""
    capacity = cache.capacity

    def attend(index: int, attention, q, k, v):
        keys, values = scatter(cache.keys[index], k), scatter(cache.values[index], v)
        queries = scatter(jnp.zeros_like(keys), q)  # old rows' outputs are not needed: zero queries
        out = attention(queries, keys, values, whole)
        attended = jnp.take_along_axis(out, jnp.minimum(rows, capacity - 1)[:, :, None, None], axis=1)
        return attended, keys, values

    return attend


def append(model, cache: HistoryCache, new: History, *, tag: np.ndarray | None = None) -> HistoryCache:
    """`cache` extended by the history tokens `new` (see `HistoryCache.append`)."""
    config = model.config
    if _is_silu(model):
        raise ServingError("HistoryCache.append is exact only for softmax (transformer) blocks: an HSTU block divides "
                           "attention by the sample's whole token count, so every cached state changes when the "
                           "history grows; encode the longer history instead")
    _check_cache_shape(model, cache)
    check_model(cache, model_tag(model) if tag is None else tag)
    batch, width = new.item_ids.shape
    if batch != cache.batch_size:
        raise ServingError(f"new exposures are for {batch} users but the cache holds {cache.batch_size}")
    capacity = cache.capacity
    if _concrete(new, cache.lengths):
        check_history(config, new, width)
        total = np.asarray(cache.lengths) + np.asarray(new.lengths)
        if total.max(initial=0) > min(capacity, config.max_tokens - 1):
            raise ServingError(f"appending gives a history of {int(total.max())} tokens; the cache holds {capacity} "
                               f"and the model's positions cover {config.max_tokens - 1} history tokens: encode a "
                               f"cache with a larger capacity, or the most recent tokens only")
    new_lengths = jnp.asarray(new.lengths, jnp.int32)
    offsets = jnp.arange(width, dtype=jnp.int32)[None, :]
    # row of new token i of user b in the cache; tokens past new.lengths go out of bounds and are dropped
    rows = jnp.where(offsets < new_lengths[:, None], cache.lengths[:, None] + offsets, capacity)
    users = jnp.arange(batch)[:, None]
    scatter = lambda into, x: into.at[users, rows].set(x.astype(into.dtype), mode="drop")
    tokens = _history_tokens(new, jnp.minimum(cache.lengths[:, None] + offsets, config.max_tokens - 1))
    timestamps = scatter(cache.timestamps, tokens.timestamps)
    lengths = cache.lengths + new_lengths
    whole = _tokens(user_ids=cache.user_ids, item_ids=jnp.zeros((batch, capacity), jnp.int32),
                    kinds=jnp.zeros((batch, capacity), jnp.int8), actions=jnp.zeros((batch, capacity, 1), jnp.float32),
                    side=None, content=None, positions=cache.positions, request_index=None, gap_bucket=None,
                    slot=None, timestamps=timestamps, lengths=lengths)
    appended = model.forward(tokens, _attend_appended(cache, whole, rows, scatter), with_logits=False)
    return dataclasses.replace(cache, keys=appended.keys, values=appended.values, timestamps=timestamps,
                               lengths=lengths, normalizer=lengths)


__all__ = ["History", "Candidates", "HistoryCache", "ServingError", "split_batch", "encode_history", "score",
           "append", "model_tag", "check_model", "check_history", "check_candidates", "check_users", "check_features",
           "check_aggregates"]
