"""Cached attention backend `impl="pallas_triton"`: a flash-style Pallas kernel for serving.

One program per (sample, head, candidate tile) walks only the cache blocks below
`cache_lengths[b]` with an online softmax (or the HSTU SiLU sum), then folds in each candidate's
own key as one more column and writes its tile once. The bias is computed per tile from positions
and timestamps (`masking.relative_bias`): nothing of size M x N is kept in memory. On a GPU it is
lowered through Triton (compiler params select it); `interpret=True` runs the same kernel in the
Pallas interpreter on any platform, which is how CPU CI checks it against the jnp reference.

Inference only: scoring needs no gradient, so the op is wrapped in a custom_vjp whose backward
raises (differentiate `impl="xla"`, the reference, instead).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from genrank_jax.kernels.masking import relative_bias

LOG2E = math.log2(math.e)
# A finite "minus infinity": exp2(MASK_VALUE - m) is 0 and never NaN.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Candidate rows and cache rows per tile (powers of two >= 16)."""
    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        for name in ("block_m", "block_n"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 16 or value & (value - 1):
                raise ValueError(f"{name}={value!r} must be a power of two >= 16")

    @classmethod
    def for_device(cls) -> "BlockSizes":
        """GPU: 64 x 64 tiles; elsewhere (interpret mode) 16 x 16 so test shapes cross tile edges."""
        return cls() if jax.devices()[0].platform == "gpu" else cls(block_m=16, block_n=16)


@dataclasses.dataclass(frozen=True)
class _Static:
    kind: str
    scale: float
    has_alibi: bool
    has_time: bool
    block_m: int
    block_n: int
    interpret: bool
    compiler_params: object = None


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _pad(x, axis: int, size: int):
    if x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths)


def _row(vector, shape, axis):
    return lax.broadcast_in_dim(vector, shape, (axis,))


def _zero_rows(x, valid):
    """Tile `x` [T, D] with rows where `valid` [T] is False set to 0 (a select: NaN goes too)."""
    return jnp.where(_row(valid, x.shape, 0), x, jnp.zeros((), x.dtype))


def _zero_past(x, start, length):
    """Tile `x` [T, D] of rows start..start+T with rows at or past `length` set to 0."""
    return _zero_rows(x, start + lax.broadcasted_iota(jnp.int32, (x.shape[0],), 0) < length)


def _kernel(*refs, static: _Static):
    refs = list(refs)
    lengths_ref, candidates_ref, normalizer_ref, q_pos_ref, k_pos_ref, q_time_ref, k_time_ref = refs[:7]
    rest = refs[7:]
    alibi_ref = rest.pop(0) if static.has_alibi else None
    time_ref = rest.pop(0) if static.has_time else None
    q_ref, k_ref, v_ref, cache_k_ref, cache_v_ref, o_ref = rest
    b, h = pl.program_id(0), pl.program_id(1)
    block_m, block_n = static.block_m, static.block_n
    m_start = pl.program_id(2) * block_m
    cache_length = lengths_ref[b]
    alibi = None if alibi_ref is None else alibi_ref[h]
    time_slope = None if time_ref is None else time_ref[h]
    row_valid = (m_start + lax.broadcasted_iota(jnp.int32, (block_m,), 0)) < candidates_ref[b]

    q = _zero_rows(q_ref[...], row_valid)
    precision = lax.Precision.HIGHEST if q.dtype == jnp.float32 else lax.Precision.DEFAULT
    q_pos = q_pos_ref[pl.ds(m_start, block_m)]
    q_time = q_time_ref[pl.ds(m_start, block_m)]

    def body(step, carry):
        acc, m, l = carry
        n_start = pl.multiple_of(step * block_n, block_n)
        # cache rows past the length may hold NaN / Inf (0 * NaN is NaN in the matmul): zeroed
        keys = _zero_past(cache_k_ref[pl.ds(n_start, block_n), :], n_start, cache_length)
        values = _zero_past(cache_v_ref[pl.ds(n_start, block_n), :], n_start, cache_length)
        shape = (block_m, block_n)
        logits = lax.dot_general(q, keys, (((1,), (1,)), ((), ())), precision=precision,
                                 preferred_element_type=jnp.float32) * static.scale
        logits = logits + relative_bias(
            _row(q_pos, shape, 0), _row(k_pos_ref[pl.ds(n_start, block_n)], shape, 1),
            _row(q_time, shape, 0), _row(k_time_ref[pl.ds(n_start, block_n)], shape, 1), alibi, time_slope)
        k_index = n_start + lax.broadcasted_iota(jnp.int32, shape, 1)
        mask = _row(row_valid, shape, 0) & (k_index < cache_length)
        if static.kind == "softmax":
            scores = jnp.where(mask, logits * LOG2E, MASK_VALUE)
            m_next = jnp.maximum(m, scores.max(axis=1))
            correction = jnp.exp2(m - m_next)
            p = jnp.where(mask, jnp.exp2(scores - _row(m_next, shape, 0)), 0.0)
            l = l * correction + p.sum(axis=1)
            acc = acc * _row(correction, acc.shape, 0)
            m = m_next
        else:
            p = jnp.where(mask, logits / (1.0 + jnp.exp(-logits)), 0.0)
        acc = acc + lax.dot_general(p.astype(values.dtype), values, (((1,), (0,)), ((), ())),
                                    precision=precision, preferred_element_type=jnp.float32)
        return acc, m, l

    value_dim = v_ref.shape[-1]
    init = (jnp.zeros((block_m, value_dim), jnp.float32), jnp.full((block_m,), MASK_VALUE, jnp.float32),
            jnp.zeros((block_m,), jnp.float32))
    n_steps = lax.div(cache_length + (block_n - 1), jnp.int32(block_n))
    acc, m, l = lax.fori_loop(0, n_steps, body, init)

    # the candidate's own key: one more column of its row
    own_v = _zero_rows(v_ref[...], row_valid).astype(jnp.float32)
    own = jnp.sum(q.astype(jnp.float32) * _zero_rows(k_ref[...], row_valid).astype(jnp.float32), axis=1) * static.scale
    own = own + relative_bias(q_pos, q_pos, q_time, q_time, alibi, time_slope)
    if static.kind == "softmax":
        score = jnp.where(row_valid, own * LOG2E, MASK_VALUE)
        m_next = jnp.maximum(m, score)
        correction = jnp.exp2(m - m_next)
        p = jnp.where(row_valid, jnp.exp2(score - m_next), 0.0)
        l = l * correction + p
        acc = acc * _row(correction, acc.shape, 0) + _row(p, acc.shape, 0) * own_v
        # l != 0, not l > 0: NaN or Inf in q or k at a valid token makes l NaN, and it must show
        has_keys = (l != 0.0) & row_valid
        inverse = jnp.where(has_keys, 1.0 / jnp.where(has_keys, l, 1.0), 0.0)
        out = acc * _row(inverse, acc.shape, 0)
    else:
        p = jnp.where(row_valid, own / (1.0 + jnp.exp(-own)), 0.0)
        acc = acc + _row(p, acc.shape, 0) * own_v
        out = acc / jnp.maximum(normalizer_ref[b], 1).astype(jnp.float32)
    o_ref[...] = jnp.where(_row(row_valid, out.shape, 0), out, 0.0).astype(o_ref.dtype)


def _forward(static: _Static, q, k, v, cache_k, cache_v, meta):
    batch, num_slots, heads, head_dim = q.shape
    cache_len, value_dim = cache_k.shape[1], v.shape[-1]
    whole = lambda *_: (0,)
    meta_specs = [pl.BlockSpec(None, whole)] * 3 + [
        pl.BlockSpec((None, num_slots), lambda b, h, i: (b, 0)),
        pl.BlockSpec((None, cache_len), lambda b, h, i: (b, 0)),
        pl.BlockSpec((None, num_slots), lambda b, h, i: (b, 0)),
        pl.BlockSpec((None, cache_len), lambda b, h, i: (b, 0)),
    ] + [pl.BlockSpec(None, whole)] * (static.has_alibi + static.has_time)
    tile = lambda dim: pl.BlockSpec((None, static.block_m, None, dim), lambda b, h, i: (b, i, h, 0))
    cache = lambda dim: pl.BlockSpec((None, cache_len, None, dim), lambda b, h, i: (b, 0, h, 0))
    return pl.pallas_call(
        functools.partial(_kernel, static=static),
        grid=(batch, heads, num_slots // static.block_m),
        in_specs=meta_specs + [tile(head_dim), tile(head_dim), tile(value_dim), cache(head_dim), cache(value_dim)],
        out_specs=tile(value_dim),
        out_shape=jax.ShapeDtypeStruct((batch, num_slots, heads, value_dim), v.dtype),
        compiler_params=static.compiler_params,
        interpret=static.interpret,
        name=f"genrank_cached_attention_{static.kind}",
    )(*meta, q, k, v, cache_k, cache_v)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _op(static, q, k, v, cache_k, cache_v, meta):
    return _forward(static, q, k, v, cache_k, cache_v, meta)


def _op_fwd(static, q, k, v, cache_k, cache_v, meta):
    return _forward(static, q, k, v, cache_k, cache_v, meta), None


def _op_bwd(static, residuals, dout):
    raise NotImplementedError("the pallas_triton cached attention backend is inference only (serving); "
                              "differentiate cached_attention(impl='xla') instead")


_op.defvjp(_op_fwd, _op_bwd)


def _next_power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def cached_attention(q, k, v, *, cache_keys, cache_values, cache_lengths, num_candidates, positions,
                     cache_positions, timestamps, cache_timestamps, alibi_slopes, time_slopes, kind,
                     scale, normalizer, interpret, block_sizes=None):
    """[B, M, H, Dv]; arguments validated and defaulted by `genrank_jax.kernels.cached_attention`."""
    if block_sizes is None:
        block_sizes = BlockSizes.for_device()
    if not isinstance(block_sizes, BlockSizes):
        raise TypeError(f"block_sizes must be a pallas_cached.BlockSizes, got {type(block_sizes)}")
    num_slots, cache_len = q.shape[1], cache_keys.shape[1]
    value_dim = v.shape[-1]
    # tiles no larger than the (power-of-two rounded) sizes; padded rows/keys are masked
    block_m = min(block_sizes.block_m, max(16, _next_power_of_two(num_slots)))
    block_n = min(block_sizes.block_n, max(16, _next_power_of_two(cache_len)))
    params = None
    if not interpret:
        from jax.experimental.pallas import triton as pallas_triton

        params_type = getattr(pallas_triton, "CompilerParams", None) or pallas_triton.TritonCompilerParams
        params = params_type(num_warps=block_sizes.num_warps, num_stages=block_sizes.num_stages)
    static = _Static(kind=kind, scale=scale, has_alibi=alibi_slopes is not None,
                     has_time=time_slopes is not None, block_m=block_m, block_n=block_n,
                     interpret=interpret, compiler_params=params)
    # Triton tensors need power-of-two head dims: zero columns change no dot product
    head_dim = max(16, _next_power_of_two(q.shape[-1]))
    padded_value_dim = max(16, _next_power_of_two(value_dim))
    slots, keys = _round_up(num_slots, block_m), _round_up(cache_len, block_n)
    q, k = (_pad(_pad(x, 1, slots), 3, head_dim) for x in (q, k))
    v = _pad(_pad(v, 1, slots), 3, padded_value_dim)
    cache_keys = _pad(_pad(cache_keys, 1, keys), 3, head_dim)
    cache_values = _pad(_pad(cache_values, 1, keys), 3, padded_value_dim)
    meta = [cache_lengths, num_candidates, normalizer, _pad(positions, 1, slots), _pad(cache_positions, 1, keys),
            _pad(timestamps, 1, slots), _pad(cache_timestamps, 1, keys)]
    meta += [s for s in (alibi_slopes, time_slopes) if s is not None]
    out = _op(static, q, k, v, cache_keys, cache_values, meta)
    return out[:, :num_slots, :, :value_dim]
