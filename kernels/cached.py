"""The cached attention op for serving: candidate queries against a history K/V cache.

Serving encodes a user's history once and scores candidates against it. With GenRank's mask a
candidate sees every history token and itself, never another candidate, so its attention row is

    keys/values = [cached history (cache_lengths[b] valid rows) ; the candidate's own k, v]

which equals the candidate rows of the full op (`attention`) on the sequence history + candidates
with `lengths = cache_lengths + num_candidates` (tested). Shapes:

  q, k: [B, M, H, D]   v: [B, M, H, Dv]        the candidates' own projections
  cache_keys: [B, N, H, D]   cache_values: [B, N, H, Dv]   cache_lengths, num_candidates: [B] int32
  positions: [B, M] int32 (default: cache_lengths, candidates share the position after the history)
  cache_positions: [B, N] int32 (default arange(N))
  timestamps: [B, M], cache_timestamps: [B, N] float32 seconds on one clock (default zeros)
  normalizer: [B] int32, the HSTU (`kind="silu"`) divisor. The full op divides by the sample's
    whole token count, so the default is cache_lengths + num_candidates; serving passes the count
    of the whole request when its candidates are scored in several micro-batches.

Candidate rows m >= num_candidates[b] are zero. `impl`: None (the fastest for the device: the jnp
reference on CPU; on a GPU the Pallas kernel once it passed its self-check, see `selection.py`),
"xla" (the reference, differentiable) or "pallas_triton" (a flash-style Pallas kernel,
`pallas_cached.py`; inference only: differentiating it raises). A named backend that cannot run
raises NotImplementedError; none is swapped in silently.
"""

from __future__ import annotations

import jax.numpy as jnp

from genrank_jax.kernels import backends, selection
from genrank_jax.kernels.attention import _check  # the full op's shape/dtype check, same messages
from genrank_jax.typing import (
    CachedKeys,
    CachedValues,
    CachePositions,
    CacheTimes,
    CandidateOut,
    CandidatePositions,
    CandidateQueries,
    CandidateTimes,
    CandidateValues,
    HeadSlopes,
    Lengths,
)

CACHED_IMPLEMENTATIONS: tuple[str, ...] = backends.names("cached")


def cached_unavailable_reason(impl: str, *, interpret: bool = False) -> str | None:
    """None when the cached op's backend `impl` can run here, else a sentence saying why not."""
    backend = backends.lookup("cached", impl)
    if backend is None:
        return (f"the cached attention op has no backend {impl!r}; expected one of "
                f"{backends.names('cached')} or None")
    return backend.unavailable_reason(interpret)


def default_cached_impl(dtype=None) -> str:
    """The backend `impl=None` uses for `dtype` inputs: pallas_triton on a GPU where it runs and
    passes its self-check (forward only: it is inference only), else the jnp reference."""
    return selection.choose("cached", dtype)


def cached_attention(
    q: CandidateQueries, k: CandidateQueries, v: CandidateValues, *, cache_keys: CachedKeys,
    cache_values: CachedValues, cache_lengths: Lengths, num_candidates: Lengths | None = None,
    positions: CandidatePositions | None = None, cache_positions: CachePositions | None = None,
    timestamps: CandidateTimes | None = None, cache_timestamps: CacheTimes | None = None,
    alibi_slopes: HeadSlopes | None = None, time_slopes: HeadSlopes | None = None, kind: str = "softmax",
    scale: float | None = None, normalizer: Lengths | None = None, impl: str | None = None,
    interpret: bool = False, block_sizes=None,
) -> CandidateOut:
    """[B, M, H, Dv]: each candidate attends to its sample's cached history and to itself."""
    if q.ndim != 4:
        raise ValueError(f"q must be [B, M, H, D], got shape {q.shape}")
    batch, num_slots, num_heads, head_dim = q.shape
    _check("k", k, q.shape, (jnp.floating,))
    if v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, M, H, Dv] with B, M, H = {q.shape[:3]}, got {v.shape}")
    if cache_keys.ndim != 4 or cache_keys.shape[0] != batch or cache_keys.shape[2:] != q.shape[2:]:
        raise ValueError(f"cache_keys must be [B, N, H, D] with B={batch}, H, D={q.shape[2:]}, got {cache_keys.shape}")
    cache_len = cache_keys.shape[1]
    _check("cache_values", cache_values, (batch, cache_len, num_heads, v.shape[-1]), (jnp.floating,))
    if not (q.dtype == k.dtype == v.dtype == cache_keys.dtype == cache_values.dtype):
        raise TypeError(f"q, k, v, cache_keys, cache_values must share a dtype, got "
                        f"{q.dtype}, {k.dtype}, {v.dtype}, {cache_keys.dtype}, {cache_values.dtype}")
    _check("cache_lengths", cache_lengths, (batch,), (jnp.integer,))
    cache_lengths = jnp.clip(cache_lengths.astype(jnp.int32), 0, cache_len)
    if num_candidates is None:
        num_candidates = jnp.full((batch,), num_slots, jnp.int32)
    _check("num_candidates", num_candidates, (batch,), (jnp.integer,))
    num_candidates = jnp.clip(num_candidates.astype(jnp.int32), 0, num_slots)
    if positions is None:
        positions = jnp.broadcast_to(cache_lengths[:, None], (batch, num_slots))
    _check("positions", positions, (batch, num_slots), (jnp.integer,))
    if cache_positions is None:
        cache_positions = jnp.broadcast_to(jnp.arange(cache_len, dtype=jnp.int32), (batch, cache_len))
    _check("cache_positions", cache_positions, (batch, cache_len), (jnp.integer,))
    if (timestamps is None) != (cache_timestamps is None):
        raise ValueError("give both timestamps and cache_timestamps (one clock), or neither")
    if timestamps is None:
        if time_slopes is not None:
            raise ValueError("time_slopes were given without timestamps")
        timestamps = jnp.zeros((batch, num_slots), jnp.float32)
        cache_timestamps = jnp.zeros((batch, cache_len), jnp.float32)
    _check("timestamps", timestamps, (batch, num_slots), (jnp.floating,))
    _check("cache_timestamps", cache_timestamps, (batch, cache_len), (jnp.floating,))
    for name, slopes in (("alibi_slopes", alibi_slopes), ("time_slopes", time_slopes)):
        if slopes is not None:
            _check(name, slopes, (num_heads,), (jnp.floating,))
    if kind not in ("softmax", "silu"):
        raise ValueError(f"kind must be 'softmax' or 'silu', got {kind!r}")
    if normalizer is None:
        normalizer = cache_lengths + num_candidates
    _check("normalizer", normalizer, (batch,), (jnp.integer,))
    arguments = dict(
        cache_keys=cache_keys, cache_values=cache_values, cache_lengths=cache_lengths,
        num_candidates=num_candidates, positions=positions.astype(jnp.int32),
        cache_positions=cache_positions.astype(jnp.int32), timestamps=timestamps.astype(jnp.float32),
        cache_timestamps=cache_timestamps.astype(jnp.float32),
        alibi_slopes=None if alibi_slopes is None else alibi_slopes.astype(jnp.float32),
        time_slopes=None if time_slopes is None else time_slopes.astype(jnp.float32),
        kind=kind, scale=float(head_dim ** -0.5 if scale is None else scale),
        normalizer=normalizer.astype(jnp.int32),
    )
    if impl is None:
        impl = default_cached_impl(q.dtype)
    reason = cached_unavailable_reason(impl, interpret=interpret)
    if reason is not None:
        raise NotImplementedError(reason)
    backend = backends.lookup("cached", impl)
    return backend(q, k, v, **arguments, interpret=interpret, block_sizes=block_sizes)
