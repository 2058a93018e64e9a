"""Which samples take the GPU kernels' ordered (cheaper bias) path: decided per sample, at run time.

A sample is *ordered* when every pair (query i, key j) it attends has positions[j] <= positions[i]
and timestamps[j] <= timestamps[i], t + 1 is exact in f32 for each of its valid tokens, and its
position span is short enough that the per-key ALiBi term keeps the inputs' precision. Then
the bias of a tile needs no abs and its ALiBi part is a per-key add (softmax) or a per-key and
a per-query add (SiLU) (`_gpu_tiles.ordered_logits`). GenRank's own tokens are ordered: history in time order with
increasing positions, candidates at the request's position and time, after the history.

Valid pairs have j <= i (causal history; a candidate sees the history and itself), so it is
enough that each valid token is at or after the latest key it sees before itself: the previous
token for a history query, the last history token for a candidate (candidates need no order
among themselves). Everything here is O(B S) jnp on the op's inputs, so it works under `jit`
with traced inputs: the result is an array the kernels read, never a Python branch.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

LOG2E = math.log2(math.e)


def adds_one_exactly(times):
    """[B, S] bool: fl(t + 1) == t + 1 exactly (Knuth's TwoSum error is 0; NaN/Inf give False).

    True for every t in [-2^24, -1] (relative times in the past, as the contract asks: t + 1
    lies in a binade at or below t's) and for integer seconds in (-2^24, 2^24); False e.g. for
    t = 0.3, t = -1e-10 or an odd sum beyond 2^24 (those samples take the general path).
    """
    total = times + 1.0
    times_part = total - 1.0
    one_part = total - times_part
    error = (times - times_part) + (1.0 - one_part)
    return jnp.isfinite(total) & (error == 0.0)


def key_bias_limit(dtype, kind: str = "softmax") -> float:
    """The largest per-key ALiBi term (in base 2) the ordered path takes for inputs of `dtype`.

    Its f32 rounding, half an ulp, then stays below what the inputs' precision loses anyway.
    Softmax: 2^13 for 16-bit inputs (<= 2^-11 off in a base-2 logit: p off by <= 3.4e-4
    relative, under the 2^-9 of rounding p to bf16 for the PV product); 2^6 for f32 (<= 2^-18:
    2.6e-6). SiLU subtracts a p_i again (`_gpu_tiles.ordered_logits`), an absolute error on logits
    of size ~1: 2^10 (16-bit, <= 2^-14) and 2^3 (f32, <= 2^-21)."""
    wide = jnp.dtype(dtype).itemsize > 2
    if kind == "softmax":
        return 2.0 ** 6 if wide else 2.0 ** 13
    return 2.0 ** 3 if wide else 2.0 ** 10


def ordered_samples(lengths, num_candidates, positions, timestamps, *, alibi_slopes=None,
                    key_bias_limit=float("inf")):
    """[B] bool: may sample b take the ordered path? `positions` / `timestamps` [B, S] or None
    when that bias term is absent (it then sets no condition). With `alibi_slopes` [H], the
    sample's position span times the largest slope (in base 2) must also stay within
    `key_bias_limit` (see `key_bias_limit`). Tokens past the length are ignored."""
    reference = positions if positions is not None else timestamps
    index = jnp.arange(reference.shape[1])[None, :]
    valid = index < lengths[:, None]
    history = (lengths - num_candidates)[:, None]
    # the latest key before token i that i attends: i - 1 in the history, h - 1 for a candidate
    previous = jnp.minimum(index, history) - 1
    checked = valid & (previous >= 0)
    previous = jnp.maximum(previous, 0)
    ok = jnp.ones(valid.shape, bool)
    for values in (positions, timestamps):
        if values is not None:
            before = jnp.take_along_axis(values, jnp.broadcast_to(previous, values.shape), axis=1)
            ok &= ~checked | (values >= before)  # NaN compares False: not ordered
    if timestamps is not None:
        ok &= ~valid | adds_one_exactly(timestamps)
    ordered = jnp.all(ok, axis=1)
    if positions is not None and alibi_slopes is not None:
        wide = positions.astype(jnp.float32)
        span = (jnp.max(jnp.where(valid, wide, -jnp.inf), axis=1)
                - jnp.min(jnp.where(valid, wide, jnp.inf), axis=1))
        reach = jnp.where(lengths > 0, span, 0.0) * (jnp.max(jnp.abs(alibi_slopes)) * LOG2E)
        ordered &= reach <= key_bias_limit
    return ordered


def shifted_positions(lengths, positions):
    """positions - (the sample's largest valid position): |p_i - p_j| is unchanged, and the
    ordered path's per-key ALiBi term stays as small as the sample's span (f32 exact below 2^24)."""
    valid = jnp.arange(positions.shape[1])[None, :] < lengths[:, None]
    largest = jnp.max(jnp.where(valid, positions, jnp.iinfo(jnp.int32).min), axis=1)
    largest = jnp.where(lengths > 0, largest, 0)
    return positions - largest[:, None]


def key_bias(positions, alibi_slopes, *, base2: bool = True):
    """[B, H, S] f32: the ordered path's ALiBi term slope_h * p_j (times log2(e) for softmax's
    base-2 logits; `_gpu_tiles.ordered_logits`). Keys add it; SiLU queries subtract it.

    With `shifted_positions` the values stay within slope * (the sample's position span): the f32
    product is off by at most half an ulp of that. Computed once here for every head, so the
    kernels load it next to the key tile instead of multiplying per step."""
    scaled = alibi_slopes * (LOG2E if base2 else 1.0)
    return scaled[None, :, None] * positions.astype(jnp.float32)[:, None, :]
