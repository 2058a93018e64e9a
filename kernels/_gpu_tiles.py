"""Per-tile math shared by the GPU attention kernels (Triton, Mosaic GPU and their interpret runs).

Everything here works on values already in registers: a [Tq, Tk] tile of raw q.k products and the
per-row / per-column metadata of that tile. The kernels differ only in how tiles reach registers
(ref indexing under Triton, TMA + warp-specialized pipelines under Mosaic GPU) and in which matmul
instruction they use; the mask, bias, online softmax, SiLU and their gradients are these functions,
so interpret mode on the CPU checks the same arithmetic the GPU runs.

Row vectors are broadcast with `lax.broadcast_in_dim` (not `x[:, None]`), the one form that all
three lowerings (Triton, Mosaic GPU, the CPU interpreter) accept for register arrays.

Softmax statistics are kept in base 2 (`exp2`, logits times log2(e)), as FlashAttention does: the
log-sum-exp saved for the backward pass is `lse2 = m2 + log2(l)`.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jax import lax

from genrank_jax.kernels.masking import relative_bias, valid_pairs

LOG2E = math.log2(math.e)
# A finite "minus infinity": exp2(MASK_VALUE - m) is 0 and MASK_VALUE - MASK_VALUE is 0, never NaN.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def rows(vector, shape):
    """[Tq] -> [Tq, Tk]."""
    return lax.broadcast_in_dim(vector, shape, (0,))


def cols(vector, shape):
    """[Tk] -> [Tq, Tk]."""
    return lax.broadcast_in_dim(vector, shape, (1,))


def zero_past(x, start, length):
    """Tile `x` [T, D] of tokens start..start+T with rows at or past `length` set to 0.

    Padding may hold NaN or Inf, and 0 * NaN is NaN inside a matmul: every k, v, q or dout tile
    that feeds a product is cleaned this way before use, so padding never reaches a valid output.
    """
    index = start + lax.broadcasted_iota(jnp.int32, x.shape, 0)
    return jnp.where(index < length, x, jnp.zeros((), x.dtype))


def tile_logits(qk, *, q_index, k_index, q_pos, k_pos, q_time, k_time, length, num_candidates,
                alibi_slope, time_slope, scale):
    """Logits (natural units) and validity of one tile: ([Tq, Tk] f32, [Tq, Tk] bool).

    `qk` [Tq, Tk] f32 raw q.k products; index/position/time arguments [Tq, Tk] (or broadcastable
    [Tq, 1] / [1, Tk]); `length`, `num_candidates` scalars of the sample; slopes scalars or None.
    """
    mask = valid_pairs(q_index, k_index, length, num_candidates)
    logits = qk * scale
    if alibi_slope is not None or time_slope is not None:
        logits = logits + relative_bias(q_pos, k_pos, q_time, k_time, alibi_slope, time_slope)
    return logits, mask


def softmax_update(logits, mask, m_prev, l_prev):
    """One online-softmax step: (p [Tq, Tk] f32, correction [Tq], m_next [Tq], l_next [Tq]).

    `m_prev` is the running max in base-2 units (starts at MASK_VALUE), `l_prev` the running sum.
    Masked entries get p = 0 exactly, so fully masked rows keep l = 0 and produce no NaN.
    """
    scores = jnp.where(mask, logits * LOG2E, MASK_VALUE)
    m_next = jnp.maximum(m_prev, scores.max(axis=1))
    correction = jnp.exp2(m_prev - m_next)
    p = jnp.where(mask, jnp.exp2(scores - rows(m_next, scores.shape)), 0.0)
    l_next = l_prev * correction + p.sum(axis=1)
    return p, correction, m_next, l_next


def softmax_finish(acc, m, l):
    """Normalized output [Tq, Dv] f32 and base-2 log-sum-exp [Tq]; rows with no key give 0."""
    has_keys = l > 0.0
    inverse = jnp.where(has_keys, 1.0 / jnp.where(has_keys, l, 1.0), 0.0)
    lse2 = jnp.where(has_keys, m + jnp.log2(jnp.where(has_keys, l, 1.0)), 0.0)
    return acc * rows(inverse, acc.shape), lse2


def _sigmoid(x):
    # 1 / (1 + exp(-x)) is exact enough in f32 and lowers everywhere; exp overflow gives 1/inf = 0.
    return 1.0 / (1.0 + jnp.exp(-x))


def silu_weights(logits, mask):
    """HSTU pointwise weights silu(logits) on valid pairs, 0 elsewhere: [Tq, Tk] f32."""
    return jnp.where(mask, logits * _sigmoid(logits), 0.0)


def softmax_grads(logits, mask, lse2, delta, dp, query_axis: int = 0):
    """(p, dlogits) of a tile for the softmax backward, both [Tq, Tk] f32.

    `lse2`, `delta` [Tq] (delta_i = sum_d out_id * dout_id); `dp` [Tq, Tk] = dout . v_j.
    `query_axis=1` takes transposed [Tk, Tq] tiles (the Hopper dk/dv kernel computes k q^T).
    """
    per_query = lambda x: lax.broadcast_in_dim(x, dp.shape, (query_axis,))
    scores = jnp.where(mask, logits * LOG2E, MASK_VALUE)
    p = jnp.where(mask, jnp.exp2(scores - per_query(lse2)), 0.0)
    return p, p * (dp - per_query(delta))


def silu_grads(logits, mask, dp):
    """(silu(logits), dlogits) of a tile for the HSTU backward, both [Tq, Tk] f32, unscaled by 1/L."""
    sigmoid = _sigmoid(logits)
    weights = jnp.where(mask, logits * sigmoid, 0.0)
    dlogits = jnp.where(mask, dp * (sigmoid * (1.0 + logits * (1.0 - sigmoid))), 0.0)
    return weights, dlogits


# ---- which blocks hold at least one valid pair (the skipping rules, in block units) ----

def _div(a, b):
    # lax.div, not `//`: the Triton lowering has no floor_divide on int32 scalars; a, b >= 0 here.
    return lax.div(a, jnp.int32(b))


def _cdiv(a, b):
    return _div(a + (b - 1), b)


def kv_steps(q_start, block_q, block_k, length, num_candidates):
    """Key blocks a query tile [q_start, q_start + block_q) needs: (n_first, second_start, n_steps).

    Valid keys of the tile are [0, min(q_end, h)) (history, causal) and the diagonal of its
    candidate rows [max(q_start, h), min(q_end, L)); every other key block is fully masked.
    Step s < n_first visits key block s; later steps visit block second_start + s - n_first.
    All arguments are int32 scalars (traced) except the static block sizes.
    """
    history = length - num_candidates
    q_end = q_start + block_q
    active = q_start < length
    n_first = jnp.where(active, _cdiv(jnp.minimum(q_end, history), block_k), 0)
    diagonal_start = _div(jnp.maximum(q_start, history), block_k)
    second_start = jnp.maximum(diagonal_start, n_first)
    second_end = jnp.where(active, _cdiv(jnp.minimum(q_end, length), block_k), 0)
    n_second = jnp.maximum(second_end - second_start, 0)
    return n_first, second_start, n_first + n_second


def kv_block(step, n_first, second_start):
    """Key block index visited at `step` (see `kv_steps`)."""
    return jnp.where(step < n_first, step, second_start + step - n_first)


def q_blocks(k_start, block_k, block_q, length, num_candidates):
    """Query blocks [first, end) that see a key tile [k_start, k_start + block_k).

    A key tile holding history keys is seen by history rows from k_start on and by every
    candidate; a tile of candidate keys only by the same rows (the diagonal).
    """
    history = length - num_candidates
    q_end = jnp.where(k_start < history, length, jnp.minimum(k_start + block_k, length))
    first = _div(k_start, block_q)
    end = jnp.where(k_start < length, _cdiv(q_end, block_q), first)
    return first, jnp.maximum(end, first)
