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

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)
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


def tile_logits(qk, *, q_pos, k_pos, q_time, k_time, alibi_slope, time_slope, scale,
                base2: bool = False):
    """Logits of one tile, [Tq, Tk] f32: scale * q.k + ALiBi position/time bias.

    `qk` raw q.k products; position/time arguments [Tq, Tk] (or broadcastable [Tq, 1] / [1, Tk]),
    None when that bias term is absent; slopes scalars or None. `base2=True` returns the logits
    times log2(e), the units of the softmax's exp2, with log2(e) folded into the per-head scalars
    (one multiply per element fewer, and log2(1 + gap) straight from the lg2 unit, with no ln 2).
    """
    unit = LOG2E if base2 else 1.0
    logits = qk * (scale * unit)
    if alibi_slope is not None:
        distance = jnp.abs(q_pos - k_pos).astype(jnp.float32)
        logits = logits - (alibi_slope * unit) * distance
    if time_slope is not None:
        gap = jnp.abs(q_time - k_time)
        if base2:  # slope * ln(1 + gap) * log2(e) = slope * log2(1 + gap)
            logits = logits - time_slope * jnp.log2(1.0 + gap)
        else:
            logits = logits - time_slope * jnp.log1p(gap)
    return logits


def ordered_logits(qk, *, key_bias, query_bias, query_time_plus_one, key_time, time_slope, scale,
                   base2: bool):
    """Logits of a tile of an *ordered* sample: base 2 for softmax (less a per-query constant),
    natural for SiLU (exact).

    Ordered (`ordering.ordered_samples`): every valid pair has p_j <= p_i and t_j <= t_i, and
    t_i + 1 is exact in f32. With a = alibi slope (times log2(e) in base 2) the bias is then
        -a (p_i - p_j) - c log(1 + t_i - t_j)  =  a p_j - a p_i - c log((t_i + 1) - t_j):
    no abs. `key_bias` is a p_j (`ordering.key_bias`), `query_time_plus_one` is t_i + 1, so the
    ALiBi term is per-key / per-query adds and the time term one subtraction, a lg2 and a
    multiply-add. For softmax, -a p_i is the same for every key of query i: softmax cancels it,
    and so does its backward as long as the saved lse2 comes from the same shifted logits (it
    does: forward and backward take this path together), so `query_bias` is None and the ALiBi
    term costs one add. SiLU has no such invariance: `query_bias` = a p_i is subtracted.
    (1 + t_i - t_j) is rounded once, where the general path's fl(fl(t_i - t_j) + 1) rounds twice.
    Masked pairs (j after i) may give lg2 of a negative number (NaN): the callers mask them with
    a select, as every masked score. Arguments are [Tq, Tk] broadcasts (None: absent term).
    """
    logits = qk * (scale * (LOG2E if base2 else 1.0))
    if key_bias is not None:
        logits = logits + key_bias
    if query_bias is not None:
        logits = logits - query_bias
    if time_slope is not None:
        # c log(x) = c ln(2) log2(x): base 2 needs c log2(x), natural c ln(2) log2(x)
        slope = time_slope if base2 else time_slope * LN2
        logits = logits - slope * jnp.log2(query_time_plus_one - key_time)
    return logits


def key_limits(q_index, length, num_candidates):
    """Per-query (last_key, own_key): query i sees key j iff j <= last_key or j == own_key.

    A history query (i < h) sees keys up to itself; a candidate the history (j <= h - 1) and
    itself; a query at or past `length` nothing (both -1). Same shape as `q_index`, so the
    per-element mask is two compares and an or (`pair_mask`), not the seven of `valid_pairs`.
    """
    history = length - num_candidates
    row_valid = q_index < length
    last_key = jnp.where(row_valid, jnp.where(q_index < history, q_index, history - 1), -1)
    own_key = jnp.where(row_valid, q_index, -1)
    return last_key, own_key


def pair_mask(k_index, last_key, own_key):
    """Valid (query, key) pairs of a tile from `key_limits`, all broadcastable to [Tq, Tk]."""
    return (k_index <= last_key) | (k_index == own_key)


# A finite start for the running max, far above MASK_VALUE: a masked score gives
# exp2(MASK_VALUE - m) = 0 even in a row that has seen no valid key yet, so p needs no second mask.
# Valid base-2 logits are assumed above -1e30.
M_INIT = -1e30


def softmax_update(scores, mask, m_prev, l_prev):
    """One online-softmax step: (p [Tq, Tk] f32, correction [Tq], m_next [Tq], l_next [Tq]).

    `scores` are base-2 logits; `mask` is None on interior tiles (every pair valid). `m_prev`
    is the running max (starts at M_INIT), `l_prev` the running sum. Masked entries give p = 0.
    """
    if mask is not None:
        scores = jnp.where(mask, scores, MASK_VALUE)
    m_next = jnp.maximum(m_prev, scores.max(axis=1))
    correction = jnp.exp2(m_prev - m_next)
    p = jnp.exp2(scores - rows(m_next, scores.shape))
    l_next = l_prev * correction + p.sum(axis=1)
    return p, correction, m_next, l_next


def softmax_finish(acc, m, l, row_valid):
    """Normalized output [Tq, Dv] f32 and base-2 log-sum-exp [Tq]; rows with no key, and rows
    past the length (`row_valid` [Tq] False: they may hold garbage from unmasked interior tiles,
    even NaN from padding queries), give 0.

    A row without keys has l == 0 exactly. `l != 0`, not `l > 0`: NaN or Inf in q or k at a valid
    token makes l NaN, and that NaN must reach the output, as in the reference."""
    has_keys = (l != 0.0) & row_valid
    inverse = jnp.where(has_keys, 1.0 / jnp.where(has_keys, l, 1.0), 0.0)
    lse2 = jnp.where(has_keys, m + jnp.log2(jnp.where(has_keys, l, 1.0)), 0.0)
    return jnp.where(rows(has_keys, acc.shape), acc * rows(inverse, acc.shape), 0.0), lse2


def zero_rows(x, row_valid):
    """`x` [T, D] with rows where `row_valid` [T] is False set to 0 (a select, so NaN goes too)."""
    return jnp.where(rows(row_valid, x.shape), x, jnp.zeros((), x.dtype))


def _sigmoid(x):
    # 1 / (1 + exp(-x)) is exact enough in f32 and lowers everywhere; exp overflow gives 1/inf = 0.
    return 1.0 / (1.0 + jnp.exp(-x))


def silu_weights(logits, mask):
    """HSTU pointwise weights silu(logits) on valid pairs (all pairs when `mask` is None)."""
    weights = logits * _sigmoid(logits)
    return weights if mask is None else jnp.where(mask, weights, 0.0)


def softmax_probs(scores, mask, lse2, query_axis: int = 0):
    """p [Tq, Tk] f32 of a tile for the softmax backward, from base-2 `scores` and `lse2` [Tq].

    `mask` None on interior tiles. A masked score gives exp2(MASK_VALUE - lse2) = 0 (lse2 is 0
    for a row without keys). `query_axis=1` takes transposed [Tk, Tq] tiles (the Hopper dk/dv
    kernel computes k q^T).
    """
    if mask is not None:
        scores = jnp.where(mask, scores, MASK_VALUE)
    return jnp.exp2(scores - lax.broadcast_in_dim(lse2, scores.shape, (query_axis,)))


def softmax_dlogits(p, dp, delta, query_axis: int = 0):
    """dlogits [Tq, Tk] f32 (per natural logit) = p (dp - delta); delta_i = sum_d out_id dout_id,
    `dp` [Tq, Tk] = dout . v_j."""
    return p * (dp - lax.broadcast_in_dim(delta, dp.shape, (query_axis,)))


def softmax_grads(scores, mask, lse2, delta, dp, query_axis: int = 0):
    """(p, dlogits) of a tile for the softmax backward, both [Tq, Tk] f32: `softmax_probs`, then
    `softmax_dlogits` (the Hopper dk/dv kernel calls them apart, to issue the dV WGMMA on p
    before dp is ready)."""
    p = softmax_probs(scores, mask, lse2, query_axis)
    return p, softmax_dlogits(p, dp, delta, query_axis)


def silu_parts(logits, mask):
    """(silu(logits), d silu / d logits) of a tile, both [Tq, Tk] f32; `mask` None: all valid."""
    sigmoid = _sigmoid(logits)
    weights = logits * sigmoid
    slope = sigmoid * (1.0 + logits * (1.0 - sigmoid))
    return (weights, slope) if mask is None else (jnp.where(mask, weights, 0.0), slope)


def silu_dlogits(slope, mask, dp):
    """dlogits [Tq, Tk] f32 of the HSTU backward (unscaled by 1/L): dp silu'(logits), valid pairs."""
    dlogits = dp * slope
    return dlogits if mask is None else jnp.where(mask, dlogits, 0.0)


def silu_grads(logits, mask, dp):
    """(silu(logits), dlogits) of a tile for the HSTU backward, [Tq, Tk] f32, unscaled by 1/L."""
    weights, slope = silu_parts(logits, mask)
    return weights, silu_dlogits(slope, mask, dp)


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


def interior_kv_steps(q_start, block_k, length, num_candidates, n_first):
    """Leading key steps of a query tile starting at `q_start` in which every pair is valid
    for rows below `length`: key blocks that end at or before both q_start and the history.

    Those steps run without a mask; rows at or past `length` then hold garbage that
    `softmax_finish` / the dq epilogue zero.
    """
    history = length - num_candidates
    return jnp.minimum(jnp.minimum(_div(q_start, block_k), _div(history, block_k)), n_first)


def interior_q_blocks(k_start, block_k, block_q, length, num_candidates, first, end):
    """Query blocks [a, b) within [first, end) whose pairs with key tile [k_start, k_start +
    block_k) are all valid: the keys are history (end <= h), the queries start at or after the
    tile's end (causal), and end at or before `length` (no padding query adds to dk, dv)."""
    history = length - num_candidates
    k_end = k_start + block_k
    a = jnp.clip(_cdiv(k_end, block_q), first, end)
    b = jnp.where(k_end <= history, jnp.clip(_div(length, block_q), a, end), a)
    return a, b
