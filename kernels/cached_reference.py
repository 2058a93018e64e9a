"""The jnp reference of the cached attention op (serving): candidates against a history cache.

This is `cached_attention(impl="xla")` and the oracle of its Pallas backend. It materializes
[B, H, M, N] logits, which is what a serving step needs anyway (M candidates x N history keys).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from genrank_jax.kernels.masking import relative_bias


def cached_attention_reference(
    q, k, v, *, cache_keys, cache_values, cache_lengths, num_candidates, positions,
    cache_positions, timestamps, cache_timestamps, alibi_slopes, time_slopes, kind, scale,
    normalizer, precision=jax.lax.Precision.HIGHEST,
):
    """[B, M, H, Dv] output; arguments already validated and defaulted by `cached_attention`."""
    num_slots, cache_len = q.shape[1], cache_keys.shape[1]
    f32 = lambda x: x.astype(jnp.float32)
    # As in the full op, padding (cache rows past cache_lengths, candidate slots past
    # num_candidates) is zeroed before any product: a zero weight times NaN is NaN in an einsum.
    cached = jnp.arange(cache_len)[None, :] < cache_lengths[:, None]  # [B, N]
    slot = jnp.arange(num_slots)[None, :] < num_candidates[:, None]  # [B, M]
    zero_past = lambda x, valid: jnp.where(valid.reshape(valid.shape + (1,) * (x.ndim - 2)), x,
                                           jnp.zeros((), x.dtype))
    cache_keys, cache_values, cache_timestamps = (zero_past(x, cached)
                                                  for x in (cache_keys, cache_values, cache_timestamps))
    q, k, v, timestamps = (zero_past(x, slot) for x in (q, k, v, timestamps))
    per_head = lambda slopes, extra: None if slopes is None else slopes.reshape((1, -1) + (1,) * extra)
    # [B, H, M, N]: each candidate against every cached history key
    cache_bias = relative_bias(
        positions[:, None, :, None], cache_positions[:, None, None, :],
        timestamps[:, None, :, None], cache_timestamps[:, None, None, :],
        per_head(alibi_slopes, 2), per_head(time_slopes, 2))
    cache_logits = jnp.einsum("bmhd,bnhd->bhmn", f32(q), f32(cache_keys), precision=precision) * scale + cache_bias
    # [B, H, M]: each candidate against its own key (the only candidate it sees)
    self_bias = relative_bias(positions[:, None, :], positions[:, None, :], timestamps[:, None, :],
                              timestamps[:, None, :], per_head(alibi_slopes, 1), per_head(time_slopes, 1))
    self_logits = jnp.einsum("bmhd,bmhd->bhm", f32(q), f32(k), precision=precision) * scale + self_bias

    row_valid = (jnp.arange(num_slots)[None, :] < num_candidates[:, None])[:, None, :]  # [B, 1, M]
    cache_mask = row_valid[..., None] & (jnp.arange(cache_len) < cache_lengths[:, None])[:, None, None, :]
    if kind == "softmax":
        cache_logits = jnp.where(cache_mask, cache_logits, -jnp.inf)
        self_logits = jnp.where(row_valid, self_logits, -jnp.inf)
        row_max = jnp.maximum(cache_logits.max(-1), self_logits)
        row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
        cache_weights = jnp.exp(cache_logits - row_max[..., None])
        self_weights = jnp.exp(self_logits - row_max)
        denom = cache_weights.sum(-1) + self_weights
        denom = jnp.where(denom > 0, denom, 1.0)
        cache_weights, self_weights = cache_weights / denom[..., None], self_weights / denom
    elif kind == "silu":
        inverse = 1.0 / jnp.maximum(normalizer, 1).astype(jnp.float32)[:, None, None]
        cache_weights = jnp.where(cache_mask, jax.nn.silu(cache_logits), 0.0) * inverse[..., None]
        self_weights = jnp.where(row_valid, jax.nn.silu(self_logits), 0.0) * inverse
    else:
        raise ValueError(f"kind must be 'softmax' or 'silu', got {kind!r}")
    out = jnp.einsum("bhmn,bnhd->bmhd", cache_weights, f32(cache_values), precision=precision)
    out = out + jnp.einsum("bhm,bmhd->bmhd", self_weights, f32(v), precision=precision)
    return out.astype(v.dtype)
