"""The jnp reference of the attention op: the contract of docs/design.md, written plainly.

This is `impl="xla"` and the oracle for every Pallas backend. It materializes [B, H, S, S]
logits, so its memory grows as S^2: fine for tests and short sequences, not for long ones.

Nothing at a padding position (token index >= lengths[b]) reaches a valid output, even NaN or Inf:
q, k, v and timestamps are zeroed there before any product, and masked logits are replaced before
the SiLU (a `where` alone still lets NaN through its gradient). Slopes and timestamps are
constants of the op: their gradient is stopped, as in every Pallas backend.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from genrank_jax.kernels.masking import relative_bias, valid_pairs


def attention_reference(
    q, k, v, *, lengths, num_candidates, positions, timestamps,
    alibi_slopes, time_slopes, kind, scale,
    precision=jax.lax.Precision.HIGHEST,
):
    """[B, S, H, Dv] output; arguments already validated and defaulted by `attention`."""
    seq_len = q.shape[1]
    index = jnp.arange(seq_len)
    token_valid = index[None, :] < lengths[:, None]  # [B, S]
    zero_padding = lambda x: jnp.where(token_valid[:, :, None, None], x, jnp.zeros((), x.dtype))
    q, k, v = (zero_padding(x) for x in (q, k, v))
    constant = lambda x: None if x is None else jax.lax.stop_gradient(x)
    timestamps = constant(jnp.where(token_valid, timestamps, 0.0))
    alibi_slopes, time_slopes = constant(alibi_slopes), constant(time_slopes)
    # Broadcast the per-tile helpers over [B, H, S(query), S(key)].
    mask = valid_pairs(
        index[None, None, :, None], index[None, None, None, :],
        lengths[:, None, None, None], num_candidates[:, None, None, None],
    )
    per_head = lambda slopes: None if slopes is None else slopes[None, :, None, None]
    bias = relative_bias(
        positions[:, None, :, None], positions[:, None, None, :],
        timestamps[:, None, :, None], timestamps[:, None, None, :],
        per_head(alibi_slopes), per_head(time_slopes),
    )
    logits = jnp.einsum(
        "bihd,bjhd->bhij", q.astype(jnp.float32), k.astype(jnp.float32), precision=precision
    ) * scale + bias
    if kind == "softmax":
        logits = jnp.where(mask, logits, -jnp.inf)
        row_max = jnp.max(logits, axis=-1, keepdims=True)
        row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
        weights = jnp.exp(logits - row_max)
        denom = jnp.sum(weights, axis=-1, keepdims=True)
        weights = weights / jnp.where(denom > 0, denom, 1.0)
    elif kind == "silu":
        weights = jnp.where(mask, jax.nn.silu(jnp.where(mask, logits, 0.0)), 0.0)
        weights = weights / jnp.maximum(lengths, 1).astype(jnp.float32)[:, None, None, None]
    else:
        raise ValueError(f"kind must be 'softmax' or 'silu', got {kind!r}")
    out = jnp.einsum("bhij,bjhd->bihd", weights, v.astype(jnp.float32), precision=precision)
    out = jnp.where(token_valid[:, :, None, None], out, 0.0)
    return out.astype(v.dtype)
