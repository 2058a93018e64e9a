"""Blocked `pallas_call` attention kernels: forward, dq and dk/dv, written with plain ref indexing.

These are the Triton backend's kernels (lowered with Triton compiler params) and the kernels the
Mosaic GPU backend runs under `interpret=True` (the Hopper pipeline needs hardware barriers and TMA
that the CPU interpreter cannot run; the tile math is the same `_gpu_tiles` code).

Layouts, all padded by the caller (`_vjp.padded_call`):
  q, k [B, S, H, D], v [B, S, H, Dv] with S a multiple of every block size, D, Dv powers of two;
  lengths, num_candidates [B] int32; positions [B, S] int32; timestamps [B, S] f32;
  alibi / time slopes [H] f32 (absent when None); lse, delta [B, H, S] f32.
Grid (B, H, tiles): each program owns one output tile and writes it once, so results are
bit-for-bit deterministic (no atomics). Like the Hopper kernels, each program runs its interior
tiles (every pair valid) in a loop without a mask and the rest masked, and zeroes the tokens
past the length in every tile that can hold them before a product (padding may be NaN). With a
bias each kernel holds the ordered and the general tile math, and the sample's flag
picks one at run time (`_Meta.run`, see `ordering`), as in the Hopper kernels: interpret mode
executes the ordered arithmetic the GPU runs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from genrank_jax.kernels import _gpu_tiles as tiles


@dataclasses.dataclass(frozen=True)
class Tiling:
    """Block sizes of the three kernels (rows of q, rows of k/v)."""
    block_q: int
    block_k: int
    block_q_dq: int
    block_k_dq: int
    block_q_dkv: int
    block_k_dkv: int

    @property
    def largest(self) -> int:
        return max(dataclasses.astuple(self))


@dataclasses.dataclass(frozen=True)
class Static:
    """Everything about a call that is fixed at trace time (hashable: a custom_vjp nondiff arg)."""
    kind: str
    scale: float
    has_alibi: bool
    has_time: bool
    tiling: Tiling
    interpret: bool = False
    compiler_params: object = None  # e.g. Triton CompilerParams; None under the interpreter
    bwd_compiler_params: object = None

    @property
    def ordered_path(self) -> bool:
        """Do the kernels carry the ordered tile math (`_gpu_tiles.ordered_logits`) beside the
        general one? With a bias (without one there is nothing to save). Which one runs is the
        per-sample flag in the metadata."""
        return self.has_alibi or self.has_time


def _dot(a, b, contract_a: int, contract_b: int):
    """[M, K] x [N, K] style products with f32 accumulation; f32 inputs at full (IEEE) precision."""
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else lax.Precision.DEFAULT
    return lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())),
                           precision=precision, preferred_element_type=jnp.float32)


def _iota(n: int, axis: int):
    return lax.broadcasted_iota(jnp.int32, (n, 1) if axis == 0 else (1, n), axis)


class _Span(NamedTuple):
    """Tokens [start, start + size) of a tile side, each [size, 1] (queries) or [1, size] (keys);
    None where that bias term (or the ordered path) is absent."""
    index: jax.Array
    position: jax.Array | None
    time: jax.Array | None
    time_plus_one: jax.Array | None  # ordered path: t + 1 (read for queries)
    key_bias: jax.Array | None  # ordered path: the ALiBi term a p (keys add it, SiLU queries subtract)


class _Meta:
    """The per-sample / per-head metadata refs of one program, read lazily."""

    def __init__(self, refs, static: Static):
        refs = list(refs)
        self.lengths, self.candidates, self.positions, self.times = refs[:4]
        rest = refs[4:]
        self.alibi = rest.pop(0) if static.has_alibi else None
        self.time_slopes = rest.pop(0) if static.has_time else None
        self.ordered_flags = self.times_plus_one = self.key_bias = None
        if static.ordered_path:
            self.ordered_flags, self.times_plus_one = rest[:2]
            self.key_bias = rest[2] if static.has_alibi else None
        self.static = static
        self.batch = batch = pl.program_id(0)
        head = pl.program_id(1)
        self.length = self.lengths[batch]
        self.num_candidates = self.candidates[batch]
        self.alibi_slope = None if self.alibi is None else self.alibi[head]
        self.time_slope = None if self.time_slopes is None else self.time_slopes[head]

    def span(self, start, size: int, axis: int) -> _Span:
        """Index, position, time and (ordered path) time + 1 of tokens [start, start + size)."""
        shape = (size, 1) if axis == 0 else (1, size)
        read = lambda ref: lax.broadcast_in_dim(ref[pl.ds(start, size)], shape, (axis,))
        ordered = self.static.ordered_path
        return _Span(start + _iota(size, axis),
                     read(self.positions) if self.alibi is not None else None,
                     read(self.times) if self.time_slopes is not None else None,
                     read(self.times_plus_one) if ordered and self.time_slopes is not None else None,
                     read(self.key_bias) if self.key_bias is not None else None)

    def run(self, body) -> None:
        """`body(ordered)` for this sample: both tile maths are compiled, the sample's flag
        (`ordering.ordered_samples`) picks one at run time."""
        if not self.static.ordered_path:
            body(False)
            return
        flag = self.ordered_flags[self.batch]
        pl.when(flag != 0)(lambda: body(True))
        pl.when(flag == 0)(lambda: body(False))

    def scores(self, qk, q_span: _Span, k_span: _Span, masked: bool, ordered: bool = False):
        """(logits [Tq, Tk], mask or None): base-2 for softmax, natural for SiLU (see
        `_gpu_tiles.tile_logits`; `ordered`: `_gpu_tiles.ordered_logits`, for softmax less a
        per-query constant); no mask on interior tiles (`masked=False`)."""
        if ordered:
            logits = tiles.ordered_logits(
                qk, key_bias=k_span.key_bias,
                query_bias=q_span.key_bias if self.static.kind == "silu" else None,
                query_time_plus_one=q_span.time_plus_one, key_time=k_span.time,
                time_slope=self.time_slope, scale=self.static.scale,
                base2=self.static.kind == "softmax")
        else:
            logits = tiles.tile_logits(
                qk, q_pos=q_span.position, k_pos=k_span.position, q_time=q_span.time,
                k_time=k_span.time, alibi_slope=self.alibi_slope, time_slope=self.time_slope,
                scale=self.static.scale, base2=self.static.kind == "softmax")
        if not masked:
            return logits, None
        limits = tiles.key_limits(q_span.index, self.length, self.num_candidates)
        return logits, tiles.pair_mask(k_span.index, *limits)

    def row_valid(self, start, size: int):
        """[size] bool: tokens start..start+size that lie before the length."""
        return start + lax.broadcasted_iota(jnp.int32, (size,), 0) < self.length

    def inverse_length(self):
        return 1.0 / jnp.maximum(self.length, 1).astype(jnp.float32)


def _num_meta(static: Static) -> int:
    return 4 + static.has_alibi + static.has_time + static.ordered_path * (2 + static.has_alibi)


# ---------------------------------------------------------------- forward

def _forward_kernel(*refs, static: Static):
    split = _num_meta(static)
    meta = _Meta(refs[:split], static)
    q_ref, k_ref, v_ref, o_ref, lse_ref = refs[split:]
    block_q, block_k = static.tiling.block_q, static.tiling.block_k
    q_start = pl.program_id(2) * block_q  # read here: the interpreter has no program_id in a cond

    def run(ordered: bool):  # the tile math picked by the sample's flag
        q = q_ref[...]
        q_span = meta.span(q_start, block_q, 0)
        n_first, second_start, n_steps = tiles.kv_steps(
            q_start, block_q, block_k, meta.length, meta.num_candidates)

        def body(step, carry, masked):
            acc, m, l = carry
            k_start = pl.multiple_of(tiles.kv_block(step, n_first, second_start) * block_k,
                                     block_k)
            k = k_ref[pl.ds(k_start, block_k), :]
            v = v_ref[pl.ds(k_start, block_k), :]
            if masked:  # only masked tiles can reach padding keys
                v = tiles.zero_past(v, k_start, meta.length)
            scores, mask = meta.scores(_dot(q, k, 1, 1), q_span, meta.span(k_start, block_k, 1),
                                       masked, ordered)
            if static.kind == "softmax":
                p, correction, m, l = tiles.softmax_update(scores, mask, m, l)
                acc = acc * tiles.rows(correction, acc.shape)
            else:
                p = tiles.silu_weights(scores, mask)
            return acc + _dot(p.astype(v.dtype), v, 1, 0), m, l

        value_dim = v_ref.shape[-1]
        init = (jnp.zeros((block_q, value_dim), jnp.float32),
                jnp.full((block_q,), tiles.M_INIT, jnp.float32),
                jnp.zeros((block_q,), jnp.float32))
        n_interior = tiles.interior_kv_steps(q_start, block_k, meta.length, meta.num_candidates,
                                             n_first)
        carry = lax.fori_loop(0, n_interior, functools.partial(body, masked=False), init)
        acc, m, l = lax.fori_loop(n_interior, n_steps, functools.partial(body, masked=True), carry)
        row_valid = meta.row_valid(q_start, block_q)
        if static.kind == "softmax":
            out, lse2 = tiles.softmax_finish(acc, m, l, row_valid)
        else:
            out = tiles.zero_rows(acc * meta.inverse_length(), row_valid)
            lse2 = jnp.zeros((block_q,), jnp.float32)
        o_ref[...] = out.astype(o_ref.dtype)
        lse_ref[...] = lse2

    meta.run(run)


def _meta_specs(static: Static, seq_len: int):
    whole = lambda *_: (0,)
    specs = [
        pl.BlockSpec(None, whole),  # lengths [B]
        pl.BlockSpec(None, whole),  # num_candidates [B]
        pl.BlockSpec((None, seq_len), lambda b, h, i: (b, 0)),  # positions row
        pl.BlockSpec((None, seq_len), lambda b, h, i: (b, 0)),  # timestamps row
    ]
    specs += [pl.BlockSpec(None, whole)] * (static.has_alibi + static.has_time)  # slopes [H]
    if static.ordered_path:
        specs += [pl.BlockSpec(None, whole),  # ordered flags [B]
                  pl.BlockSpec((None, seq_len), lambda b, h, i: (b, 0))]  # t + 1 row
        if static.has_alibi:  # the per-key ALiBi term of this head [B, H, S]
            specs.append(pl.BlockSpec((None, None, seq_len), lambda b, h, i: (b, h, 0)))
    return specs


def _meta_args(meta):
    """The metadata arrays in the kernels' order, absent terms (None) left out."""
    return [x for x in meta if x is not None]


def forward(static: Static, q, k, v, meta):
    """(out [B, S, H, Dv], lse2 [B, H, S] f32) for padded inputs."""
    batch, seq_len, heads, head_dim = q.shape
    value_dim = v.shape[-1]
    block_q = static.tiling.block_q
    row_tile = lambda size, dim: pl.BlockSpec((None, size, None, dim), lambda b, h, i: (b, i, h, 0))
    whole_rows = lambda dim: pl.BlockSpec((None, seq_len, None, dim), lambda b, h, i: (b, 0, h, 0))
    return pl.pallas_call(
        functools.partial(_forward_kernel, static=static),
        grid=(batch, heads, seq_len // block_q),
        in_specs=_meta_specs(static, seq_len) + [
            row_tile(block_q, head_dim), whole_rows(head_dim), whole_rows(value_dim)],
        out_specs=[row_tile(block_q, value_dim),
                   pl.BlockSpec((None, None, block_q), lambda b, h, i: (b, h, i))],
        out_shape=[jax.ShapeDtypeStruct((batch, seq_len, heads, value_dim), v.dtype),
                   jax.ShapeDtypeStruct((batch, heads, seq_len), jnp.float32)],
        compiler_params=static.compiler_params,
        interpret=static.interpret,
        name=f"genrank_attention_{static.kind}_fwd",
    )(*_meta_args(meta), q, k, v)


# ---------------------------------------------------------------- backward

def _tile_grads(static, meta, q, k, v, do, q_span, k_span, lse2, delta, masked, ordered):
    scores, mask = meta.scores(_dot(q, k, 1, 1), q_span, k_span, masked, ordered)
    dp = _dot(do, v, 1, 1)
    if static.kind == "softmax":
        return tiles.softmax_grads(scores, mask, lse2, delta, dp)
    return tiles.silu_grads(scores, mask, dp)


def _dq_kernel(*refs, static: Static):
    split = _num_meta(static)
    meta = _Meta(refs[:split], static)
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref = refs[split:]
    block_q, block_k = static.tiling.block_q_dq, static.tiling.block_k_dq
    q_start = pl.program_id(2) * block_q

    def run(ordered: bool):  # see _forward_kernel
        q, do = (tiles.zero_past(ref[...], q_start, meta.length) for ref in (q_ref, do_ref))
        lse2, delta = lse_ref[...], delta_ref[...]
        q_span = meta.span(q_start, block_q, 0)
        n_first, second_start, n_steps = tiles.kv_steps(
            q_start, block_q, block_k, meta.length, meta.num_candidates)

        def body(step, dq, masked):
            k_start = pl.multiple_of(tiles.kv_block(step, n_first, second_start) * block_k,
                                     block_k)
            k, v = (ref[pl.ds(k_start, block_k), :] for ref in (k_ref, v_ref))
            if masked:
                k, v = (tiles.zero_past(x, k_start, meta.length) for x in (k, v))
            _, dlogits = _tile_grads(static, meta, q, k, v, do, q_span,
                                     meta.span(k_start, block_k, 1), lse2, delta, masked,
                                     ordered)
            return dq + _dot(dlogits.astype(k.dtype), k, 1, 0)

        n_interior = tiles.interior_kv_steps(q_start, block_k, meta.length,
                                             meta.num_candidates, n_first)
        dq = lax.fori_loop(0, n_interior, functools.partial(body, masked=False),
                           jnp.zeros(q.shape, jnp.float32))
        dq = lax.fori_loop(n_interior, n_steps, functools.partial(body, masked=True), dq)
        # rows past the length ran through unmasked interior tiles: drop what they gathered
        dq = tiles.zero_rows(dq, meta.row_valid(q_start, block_q)) * static.scale
        if static.kind == "silu":
            dq = dq * meta.inverse_length()
        dq_ref[...] = dq.astype(dq_ref.dtype)

    meta.run(run)


def _dkv_kernel(*refs, static: Static):
    split = _num_meta(static)
    meta = _Meta(refs[:split], static)
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref = refs[split:]
    block_q, block_k = static.tiling.block_q_dkv, static.tiling.block_k_dkv
    k_start = pl.program_id(2) * block_k

    def run(ordered: bool):  # see _forward_kernel
        k, v = (tiles.zero_past(ref[...], k_start, meta.length) for ref in (k_ref, v_ref))
        k_span = meta.span(k_start, block_k, 1)
        first, end = tiles.q_blocks(k_start, block_k, block_q, meta.length, meta.num_candidates)

        def body(q_block, carry, masked):
            dk, dv = carry
            q_start = pl.multiple_of(q_block * block_q, block_q)
            rows = pl.ds(q_start, block_q)
            q, do = q_ref[rows, :], do_ref[rows, :]
            if masked:  # only masked tiles can reach padding queries
                q, do = (tiles.zero_past(x, q_start, meta.length) for x in (q, do))
            p, dlogits = _tile_grads(static, meta, q, k, v, do, meta.span(q_start, block_q, 0),
                                     k_span, lse_ref[rows], delta_ref[rows], masked, ordered)
            return (dk + _dot(dlogits.astype(q.dtype), q, 0, 0),
                    dv + _dot(p.astype(do.dtype), do, 0, 0))

        init = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
        a, b = tiles.interior_q_blocks(k_start, block_k, block_q, meta.length, meta.num_candidates,
                                       first, end)
        carry = lax.fori_loop(first, a, functools.partial(body, masked=True), init)
        carry = lax.fori_loop(a, b, functools.partial(body, masked=False), carry)
        dk, dv = lax.fori_loop(b, end, functools.partial(body, masked=True), carry)
        dk = dk * static.scale
        if static.kind == "silu":
            dk, dv = dk * meta.inverse_length(), dv * meta.inverse_length()
        dk_ref[...] = dk.astype(dk_ref.dtype)
        dv_ref[...] = dv.astype(dv_ref.dtype)

    meta.run(run)


def backward(static: Static, q, k, v, meta, out, lse2, dout):
    """(dq, dk, dv) for padded inputs; `out`, `lse2` from `forward`, `dout` like `out`."""
    batch, seq_len, heads, head_dim = q.shape
    value_dim = v.shape[-1]
    dout = dout.astype(v.dtype)
    if static.kind == "softmax":
        delta = jnp.einsum("bshd,bshd->bhs", out.astype(jnp.float32), dout.astype(jnp.float32))
    else:  # HSTU has no normalizer: lse and delta are unused placeholders
        delta = jnp.zeros_like(lse2)
    tiling = static.tiling
    row_tile = lambda size, dim: pl.BlockSpec((None, size, None, dim), lambda b, h, i: (b, i, h, 0))
    whole_rows = lambda dim: pl.BlockSpec((None, seq_len, None, dim), lambda b, h, i: (b, 0, h, 0))
    stat_tile = lambda size: pl.BlockSpec((None, None, size), lambda b, h, i: (b, h, i))
    stat_row = pl.BlockSpec((None, None, seq_len), lambda b, h, i: (b, h, 0))
    common = dict(compiler_params=static.bwd_compiler_params, interpret=static.interpret)
    meta_args = _meta_args(meta)

    dq = pl.pallas_call(
        functools.partial(_dq_kernel, static=static),
        grid=(batch, heads, seq_len // tiling.block_q_dq),
        in_specs=_meta_specs(static, seq_len) + [
            row_tile(tiling.block_q_dq, head_dim), whole_rows(head_dim), whole_rows(value_dim),
            row_tile(tiling.block_q_dq, value_dim), stat_tile(tiling.block_q_dq),
            stat_tile(tiling.block_q_dq)],
        out_specs=row_tile(tiling.block_q_dq, head_dim),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        name=f"genrank_attention_{static.kind}_dq", **common,
    )(*meta_args, q, k, v, dout, lse2, delta)

    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, static=static),
        grid=(batch, heads, seq_len // tiling.block_k_dkv),
        in_specs=_meta_specs(static, seq_len) + [
            whole_rows(head_dim), row_tile(tiling.block_k_dkv, head_dim),
            row_tile(tiling.block_k_dkv, value_dim), whole_rows(value_dim), stat_row, stat_row],
        out_specs=[row_tile(tiling.block_k_dkv, head_dim), row_tile(tiling.block_k_dkv, value_dim)],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        name=f"genrank_attention_{static.kind}_dkv", **common,
    )(*meta_args, q, k, v, dout, lse2, delta)
    return dq, dk, dv
