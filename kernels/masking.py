"""The attention contract's mask and bias for one tile of (query, key) pairs.

Shared by the jnp reference and every Pallas backend, so all of them compute exactly the same
function. Inputs are index/feature vectors of a query tile and a key tile; the outputs are
[tile_q, tile_k] arrays built from broadcasts (nothing of size S^2 unless the caller asks for the
whole sequence, as the reference does).
"""

from __future__ import annotations

import jax.numpy as jnp


def valid_pairs(q_index, k_index, length, num_candidates):
    """Which (query i, key j) pairs attend: [Tq, Tk] bool.

    `q_index` [Tq, 1] and `k_index` [1, Tk] are absolute token indices; `length` and
    `num_candidates` are scalars for the sample. A history query (i < h) sees keys j <= i; a
    candidate query (i >= h) sees all history (j < h) and itself, never another candidate.
    """
    history = length - num_candidates
    in_range = (q_index < length) & (k_index < length)
    causal_history = (q_index < history) & (k_index <= q_index)
    candidate = (q_index >= history) & ((k_index < history) | (k_index == q_index))
    return in_range & (causal_history | candidate)


def relative_bias(q_pos, k_pos, q_time, k_time, alibi_slope, time_slope):
    """ALiBi position and time bias: [Tq, Tk] float32 (0 where both slopes are None).

    `q_pos` [Tq, 1], `k_pos` [1, Tk] int; `q_time` [Tq, 1], `k_time` [1, Tk] float32 seconds;
    slopes are scalars for one head, or None when that term is absent.
    """
    bias = jnp.zeros((), jnp.float32)
    if alibi_slope is not None:
        distance = jnp.abs(q_pos - k_pos).astype(jnp.float32)
        bias = bias - alibi_slope * distance
    if time_slope is not None:
        bias = bias - time_slope * jnp.log1p(jnp.abs(q_time - k_time))
    return bias


def alibi_slopes(num_heads: int, max_bias: float = 8.0):
    """Geometric per-head slopes 2^(-max_bias * h / H), h = 1..H (Press et al., ALiBi)."""
    exponents = jnp.arange(1, num_heads + 1, dtype=jnp.float32) * (max_bias / num_heads)
    return jnp.exp2(-exponents)
