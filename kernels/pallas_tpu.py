"""Mosaic TPU backend of the attention op: flash attention with the jagged mask and ALiBi bias per tile.

The contract is docs/design.md's "The attention op" (stated plainly in `reference.py`). Three kernels, all
on the grid (batch, heads, outer token blocks, inner token blocks) with the inner axis "arbitrary":
the forward (online softmax, or the HSTU silu sum), the dq kernel (kv blocks inner) and the dk/dv
kernel (q blocks inner). `lengths` and `num_candidates` are scalar-prefetched, so the index maps
point every dead step at a block that is already in VMEM (no DMA) and `pl.when` skips its compute.
The mask and bias come from iota, positions and timestamps per tile (`masking.py`); nothing of
size S^2 exists.

Layout (TPU blocks need their last two dims to be multiples of (8, 128) or full):
  q, k, v, out, dq, dk, dv: [B, H, S', D]: a block is (tokens, full head dim).
  per-query vectors (positions, timestamps, log-sum-exp, di): [B, (H,) S', 128], lane-replicated
      as jax's own TPU flash attention keeps m and l, so a query column never needs a transpose.
  per-key vectors (positions, timestamps): [B, 8, S'], sublane-replicated.
S' is S padded up to a multiple of both blocks; padded tokens lie past every length, so they are
masked like any other dead token and their rows come out exactly zero.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from genrank_jax.kernels._vjp import make_op, round_up
from genrank_jax.kernels.masking import relative_bias, valid_pairs

NUM_LANES = 128
NUM_SUBLANES = 8
try:
    from jax.experimental.pallas import tpu as pltpu
    # jax <= 0.6 spelled it TPUCompilerParams; 0.9 to 0.12 spell it CompilerParams.
    _CompilerParams = getattr(pltpu, "CompilerParams", None) or pltpu.TPUCompilerParams
    _PrefetchScalarGridSpec, _VMEM = pltpu.PrefetchScalarGridSpec, pltpu.VMEM
except Exception as _error:  # noqa: BLE001 - a jax whose Pallas TPU API moved: reported, never raised
    _IMPORT_ERROR = _error
else:
    _IMPORT_ERROR = None
_DIMENSIONS = ("parallel", "parallel", "parallel", "arbitrary")


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Token tile sizes of the three kernels (forward, dq, dk/dv share them).

    `block_q` rows of queries meet `block_k` keys per grid step. Numerics do not depend on them
    (up to float summation order); speed and VMEM use do.
    """

    block_q: int = 128
    block_k: int = 128

    def __post_init__(self):
        for name in ("block_q", "block_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"BlockSizes.{name} must be a positive int, got {value!r}")
            if value % NUM_SUBLANES:
                raise ValueError(f"BlockSizes.{name}={value} must be a multiple of {NUM_SUBLANES} "
                                 "(the TPU sublane count)")

    def check_compiles_for_tpu(self):
        """Mosaic's stricter rule: a kv block is the lane dim of the key vectors' [8, block_k]
        tiles (and of the logits tile), so it must fill whole 128-lane vregs."""
        if self.block_k % NUM_LANES:
            raise ValueError(f"on a TPU, BlockSizes.block_k={self.block_k} must be a multiple of "
                             f"{NUM_LANES} (the lane count); other multiples of {NUM_SUBLANES} "
                             "only run with interpret=True")

    @classmethod
    def for_device(cls, device_kind: str | None = None, *, seq_len: int | None = None,
                   interpret: bool = False) -> BlockSizes:
        """Defaults for `device_kind` (default: the first device's), capped by `seq_len`.

        Not tuned on hardware: 128 is the smallest TPU-legal tile (jax's own default); chips from
        v5 on have the VMEM for wider kv tiles, which halve the grid steps' fixed cost.
        """
        if device_kind is None:
            device_kind = jax.devices()[0].device_kind
        version = re.match(r"tpu\s*v?(\d+)", device_kind.strip().lower())  # "TPU v5 lite", "TPU7x"
        newer = version is not None and int(version.group(1)) >= 5
        block_q, block_k = (256, 512) if newer and not interpret else (128, 128)
        if seq_len is not None:
            # no tile bigger than the (padded) sequence; interpret mode has no lane rule
            granule = NUM_SUBLANES if interpret else NUM_LANES
            cap = max(granule, -(-seq_len // granule) * granule)
            block_q, block_k = min(block_q, cap), min(block_k, cap)
        return cls(block_q=block_q, block_k=block_k)


@dataclasses.dataclass(frozen=True)
class _Config:
    """Everything static about one call (hashable: the custom_vjp's only non-diff argument)."""

    kind: str
    scale: float
    block_q: int
    block_k: int
    num_heads: int
    with_alibi: bool
    with_time: bool
    interpret: bool


def unavailable_reason(interpret: bool) -> str | None:
    """None when this backend can run here (interpret mode anywhere, compiled on a TPU)."""
    if _IMPORT_ERROR is not None:
        return f"jax {jax.__version__} lacks the Pallas TPU API this backend uses ({_IMPORT_ERROR})"
    if interpret:
        return None
    platform = jax.devices()[0].platform
    if platform != "tpu":
        return (f"pallas_tpu compiles only for a TPU, and the default device is {platform!r}; "
                "pass interpret=True to run it in Pallas interpret mode on the CPU")
    return None


# --- which (q block, kv block) tiles hold a valid pair -------------------------------------------
# Pure scalar arithmetic on prefetched lengths: shared by the index maps (so dead steps re-point at
# a block already in VMEM and no DMA is issued) and the kernel bodies (so dead steps do nothing).
# Every division below has non-negative operands, so truncating `lax.div` is floor division, without
# the sign fix-ups `//` would add to each index map.


def _div(numerator, denominator):
    return lax.div(numerator, denominator)


def _kv_blocks_of_q_block(q_block, length, num_candidates, cfg):
    """Live kv blocks of one q block: [0, num_history) and [first_diag, last_diag].

    A history query i sees keys j <= i; a candidate query sees history keys and itself. So the
    keys of a q block's rows are the history keys up to its last row, plus its own diagonal.
    """
    q_lo = q_block * cfg.block_q
    q_end = jnp.minimum(q_lo + cfg.block_q, length)  # rows [q_lo, q_end) are live
    rows_live = q_lo < length
    last_diag = _div(jnp.maximum(q_end - 1, 0), cfg.block_k)
    first_diag = _div(q_lo, cfg.block_k)
    history = length - num_candidates
    num_history = jnp.minimum(_div(history + cfg.block_k - 1, cfg.block_k), last_diag + 1)
    return rows_live, num_history, first_diag, last_diag


def _kv_block_is_live(q_block, kv_block, length, num_candidates, cfg):
    rows_live, num_history, first_diag, last_diag = _kv_blocks_of_q_block(
        q_block, length, num_candidates, cfg)
    return rows_live & ((kv_block < num_history) | ((kv_block >= first_diag) & (kv_block <= last_diag)))


def _last_block(length, block):
    """The block holding token `length - 1` (block 0 when the sample is empty)."""
    return _div(jnp.maximum(length - 1, 0), block)


def _kv_block_to_fetch(q_block, kv_block, length, num_candidates, cfg):
    """`kv_block` when live, else the live block fetched last (or next), so its DMA is skipped.

    A q block past the length keeps the kv block its last live predecessor ended on.
    """
    last_q = _last_block(length, cfg.block_q)
    rows_dead = q_block > last_q
    rows_live, num_history, first_diag, last_diag = _kv_blocks_of_q_block(
        jnp.minimum(q_block, last_q), length, num_candidates, cfg)
    block = jnp.where(rows_dead, last_diag, jnp.minimum(kv_block, last_diag))
    in_gap = (block >= num_history) & (block < first_diag)
    gap_target = jnp.where(num_history > 0, num_history - 1, first_diag)
    return jnp.where(rows_live, jnp.where(in_gap, gap_target, block), 0)


def _q_blocks_of_kv_block(kv_block, length, num_candidates, cfg):
    """Live q blocks of one kv block: the contiguous range [first, last].

    Rows from the block's first key on see a history key until the sequence ends; a block of
    candidate keys is seen only by its own diagonal rows.
    """
    k_lo = kv_block * cfg.block_k
    keys_live = k_lo < length
    history = length - num_candidates
    k_last = jnp.where(k_lo < history, length - 1, jnp.minimum(k_lo + cfg.block_k, length) - 1)
    first = _div(k_lo, cfg.block_q)
    last = _div(jnp.maximum(k_last, 0), cfg.block_q)
    return keys_live, first, last


def _q_block_is_live(q_block, kv_block, length, num_candidates, cfg):
    keys_live, first, last = _q_blocks_of_kv_block(kv_block, length, num_candidates, cfg)
    return keys_live & (q_block >= first) & (q_block <= last)


def _q_block_to_fetch(q_block, kv_block, length, num_candidates, cfg):
    """`q_block` when live, else the nearest live one; a kv block past the length keeps the q
    block its last live predecessor ended on."""
    last_k = _last_block(length, cfg.block_k)
    keys_dead = kv_block > last_k
    keys_live, first, last = _q_blocks_of_kv_block(
        jnp.minimum(kv_block, last_k), length, num_candidates, cfg)
    block = jnp.where(keys_dead, last, jnp.clip(q_block, first, last))
    return jnp.where(keys_live, block, 0)


# --- per-tile math shared by the three kernels ---------------------------------------------------

def _lanes(x, width):
    """A lane-replicated [rows, 128] array as [rows, width] (tile when wider, slice when narrower)."""
    if width == NUM_LANES:
        return x
    repeats = -(-width // NUM_LANES)
    if repeats > 1:
        x = jnp.tile(x, (1, repeats))
    return x if x.shape[1] == width else x[:, :width]


def _zero_past(x, start, length):
    """Tile rows of tokens at or past `length` set to 0: padding may hold NaN / Inf, and 0 * NaN
    inside a matmul is NaN, so every tile that feeds a product is cleaned first."""
    index = start + lax.broadcasted_iota(jnp.int32, x.shape, 0)
    return jnp.where(index < length, x, jnp.zeros((), x.dtype))


def _scores(q, k, *, q_lo, k_lo, length, num_candidates, head, slopes_ref, meta, cfg):
    """Logits [bq, bk] f32 (scale * q.k + bias) and the valid-pair mask [bq, bk] of one tile.

    q: [bq, D], k: [bk, D]; `meta` holds the refs of the per-query/per-key vectors in use.
    """
    shape = (cfg.block_q, cfg.block_k)
    logits = lax.dot_general(q, k, (((1,), (1,)), ((), ())),
                             preferred_element_type=jnp.float32) * cfg.scale
    q_index = lax.broadcasted_iota(jnp.int32, shape, 0) + q_lo
    k_index = lax.broadcasted_iota(jnp.int32, shape, 1) + k_lo
    mask = valid_pairs(q_index, k_index, length, num_candidates)
    if cfg.with_alibi or cfg.with_time:
        q_pos = k_pos = q_time = k_time = alibi_slope = time_slope = None
        if cfg.with_alibi:
            q_pos = _lanes(meta["q_pos"][...], cfg.block_k)
            k_pos = meta["k_pos"][...][:1]
            alibi_slope = slopes_ref[head]
        if cfg.with_time:
            q_time = _lanes(meta["q_time"][...], cfg.block_k)
            k_time = meta["k_time"][...][:1]
            time_slope = slopes_ref[cfg.num_heads + head]
        logits = logits + relative_bias(q_pos, k_pos, q_time, k_time, alibi_slope, time_slope)
    return logits, mask


def _silu_weights(logits, mask, inv_length):
    return jnp.where(mask, logits * jax.nn.sigmoid(logits), 0.0) * inv_length


def _silu_weights_grad(d_weights, logits, mask, inv_length):
    """d logits from d weights, weights = silu(logits) / length on the mask."""
    sig = jax.nn.sigmoid(logits)
    return jnp.where(mask, d_weights * (sig * (1.0 + logits * (1.0 - sig))), 0.0) * inv_length


def _meta_names(cfg, side):
    names = []
    if cfg.with_alibi:
        names.append(f"{side}_pos")
    if cfg.with_time:
        names.append(f"{side}_time")
    return names


def _split_meta(refs, cfg):
    """The metadata refs after q, k, v (and the cotangent inputs) as a name -> ref dict."""
    names = _meta_names(cfg, "q") + _meta_names(cfg, "k")
    return dict(zip(names, refs[:len(names)])), refs[len(names):]


def _inverse_length(length):
    return 1.0 / jnp.maximum(length, 1).astype(jnp.float32)


# --- forward ------------------------------------------------------------------------------------

def _forward_kernel(lengths_ref, candidates_ref, slopes_ref, q_ref, k_ref, v_ref, *refs, cfg):
    """One (b, h, q block, kv block) step. Outputs: out [bq, Dv] (and lse [bq, 128] for softmax)."""
    meta, refs = _split_meta(refs, cfg)
    if cfg.kind == "softmax":
        out_ref, lse_ref, m_ref, l_ref, acc_ref = refs
    else:
        out_ref, acc_ref = refs
    b, head, q_block, kv_block = (pl.program_id(axis) for axis in range(4))
    length, num_candidates = lengths_ref[b], candidates_ref[b]

    @pl.when(kv_block == 0)
    def _init():
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)
        if cfg.kind == "softmax":
            m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
            l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)

    @pl.when(_kv_block_is_live(q_block, kv_block, length, num_candidates, cfg))
    def _accumulate():
        v = _zero_past(v_ref[...], kv_block * cfg.block_k, length)
        logits, mask = _scores(q_ref[...], k_ref[...], q_lo=q_block * cfg.block_q,
                               k_lo=kv_block * cfg.block_k, length=length,
                               num_candidates=num_candidates, head=head, slopes_ref=slopes_ref,
                               meta=meta, cfg=cfg)
        if cfg.kind == "softmax":
            logits = jnp.where(mask, logits, -jnp.inf)
            m_prev = m_ref[...]
            m_next = jnp.maximum(m_prev, jnp.max(logits, axis=1, keepdims=True))
            # a row with no valid key so far keeps m = -inf; shift it by 0 so exp gives 0, not NaN
            m_safe = jnp.where(m_next == -jnp.inf, 0.0, m_next)
            weights = jnp.exp(logits - _lanes(m_safe, cfg.block_k))
            alpha = jnp.exp(m_prev - m_safe)
            m_ref[...] = m_next
            l_ref[...] = alpha * l_ref[...] + jnp.sum(weights, axis=1, keepdims=True)
            acc_ref[...] *= _lanes(alpha, acc_ref.shape[1])
        else:
            # 1/length is applied once at the end: the same sum, one multiply per row
            weights = _silu_weights(logits, mask, 1.0)
        acc_ref[...] += lax.dot(weights.astype(v.dtype), v, preferred_element_type=jnp.float32)

    @pl.when(kv_block == pl.num_programs(3) - 1)
    def _finish():
        if cfg.kind == "softmax":
            total = l_ref[...]
            empty = total == 0.0  # rows past the length (and padding) saw no key: output 0
            safe_total = jnp.where(empty, 1.0, total)
            out = acc_ref[...] / _lanes(safe_total, acc_ref.shape[1])
            lse_ref[...] = jnp.where(empty, 0.0, m_ref[...] + jnp.log(safe_total))
        else:
            out = acc_ref[...] * _inverse_length(length)
        # rows past the length gave every key weight 0, but 0 * (NaN or Inf in a valid v) is NaN
        # inside the matmul: a select keeps them exactly 0, as the contract says
        row = q_block * cfg.block_q + lax.broadcasted_iota(jnp.int32, out.shape, 0)
        out_ref[...] = jnp.where(row < length, out, 0.0).astype(out_ref.dtype)


def _kv_map(cfg):
    """Index-map helper of grids whose inner axis walks kv blocks: (b, q block, kv block) -> kv block."""
    return lambda b, q_block, kv_block, lengths, candidates, slopes: _kv_block_to_fetch(
        q_block, kv_block, lengths[b], candidates[b], cfg)


def _q_map(cfg):
    """Index-map helper of the dk/dv grid, inner axis q blocks: (b, kv block, q block) -> q block."""
    return lambda b, kv_block, q_block, lengths, candidates, slopes: _q_block_to_fetch(
        q_block, kv_block, lengths[b], candidates[b], cfg)


def _outer_map(block):
    """Index-map helper of an outer-axis input: (b, outer, inner) -> outer block, where blocks past
    the length re-point at the last live one (their steps compute nothing, so no DMA is wasted;
    the outputs keep their own blocks and are written as zeros)."""
    return lambda b, outer, inner, lengths, *_: jnp.minimum(outer, _last_block(lengths[b], block))


def _spec(rows, cols, token_map):
    """BlockSpec of a [B, H, S', cols] array, token block from `token_map(b, outer, inner, *refs)`."""
    return pl.BlockSpec((None, None, rows, cols),
                        lambda b, h, i, j, *refs: (b, h, token_map(b, i, j, *refs), 0))


_OWN_BLOCK = lambda b, outer, inner, *_: outer  # outputs: every outer step writes its own block


def _meta_specs(cfg, q_index, k_index):
    """BlockSpecs of the per-query [B, S', 128] and per-key [B, 8, S'] vectors in use.

    `q_index`, `k_index`: (b, outer, inner, *prefetch refs) -> that block's index on the tokens.
    """
    q_spec = pl.BlockSpec((None, cfg.block_q, NUM_LANES),
                          lambda b, h, i, j, *refs: (b, q_index(b, i, j, *refs), 0))
    k_spec = pl.BlockSpec((None, NUM_SUBLANES, cfg.block_k),
                          lambda b, h, i, j, *refs: (b, 0, k_index(b, i, j, *refs)))
    return [q_spec] * len(_meta_names(cfg, "q")) + [k_spec] * len(_meta_names(cfg, "k"))


def _prefetch_and_meta(meta):
    """(lengths, candidates, slopes) for scalar prefetch, and the vector metadata in use."""
    return meta[:3], [x for x in meta[3:] if x is not None]


def _forward(cfg, q, k, v, meta):
    """q, k: [B, H, S', D]; v: [B, H, S', Dv] -> out [B, H, S', Dv], lse [B, H, S', 128] or None."""
    batch, heads, seq, dim = q.shape
    value_dim = v.shape[-1]
    bq, bk = cfg.block_q, cfg.block_k
    fetch_kv, fetch_q = _kv_map(cfg), _outer_map(bq)
    in_specs = [_spec(bq, dim, fetch_q), _spec(bk, dim, fetch_kv), _spec(bk, value_dim, fetch_kv)]
    in_specs += _meta_specs(cfg, fetch_q, fetch_kv)
    out_shape = [jax.ShapeDtypeStruct((batch, heads, seq, value_dim), v.dtype)]
    out_specs = [_spec(bq, value_dim, _OWN_BLOCK)]
    scratch = [_VMEM((bq, value_dim), jnp.float32)]
    if cfg.kind == "softmax":
        out_shape.append(jax.ShapeDtypeStruct((batch, heads, seq, NUM_LANES), jnp.float32))
        out_specs.append(_spec(bq, NUM_LANES, _OWN_BLOCK))
        scratch = [_VMEM((bq, NUM_LANES), jnp.float32)] * 2 + scratch
    prefetch, vectors = _prefetch_and_meta(meta)
    outs = pl.pallas_call(
        functools.partial(_forward_kernel, cfg=cfg),
        grid_spec=_PrefetchScalarGridSpec(
            num_scalar_prefetch=3, grid=(batch, heads, seq // bq, seq // bk),
            in_specs=in_specs, out_specs=out_specs, scratch_shapes=scratch),
        out_shape=out_shape,
        compiler_params=_CompilerParams(dimension_semantics=_DIMENSIONS),
        interpret=cfg.interpret,
        name=f"genrank_attention_{cfg.kind}_fwd",
    )(*prefetch, q, k, v, *vectors)
    return outs[0], (outs[1] if cfg.kind == "softmax" else None)


# --- backward -----------------------------------------------------------------------------------
# softmax: p = exp(logits - lse) on the mask, dp = dO v^T, dlogits = p (dp - di), di = rowsum(dO o).
# silu:    w = silu(logits) / length on the mask, dlogits = (dO v^T) silu'(logits) / length.
# Then dq = scale dlogits k, dk = scale dlogits^T q, dv = w^T dO (p for softmax). The bias is not
# scaled and gets no gradient.

def _logits_grad(logits, mask, d_out, v, lse_ref, di_ref, length, cfg):
    """(weights, dlogits) [bq, bk] of one tile; d_out: [bq, Dv], v: [bk, Dv]."""
    d_weights = lax.dot_general(d_out, v, (((1,), (1,)), ((), ())),
                                preferred_element_type=jnp.float32)
    if cfg.kind == "softmax":
        weights = jnp.where(mask, jnp.exp(logits - _lanes(lse_ref[...], cfg.block_k)), 0.0)
        return weights, weights * (d_weights - _lanes(di_ref[...], cfg.block_k))
    inv_length = _inverse_length(length)
    return (_silu_weights(logits, mask, inv_length),
            _silu_weights_grad(d_weights, logits, mask, inv_length))


def _dq_kernel(lengths_ref, candidates_ref, slopes_ref, q_ref, k_ref, v_ref, d_out_ref, *refs, cfg):
    """One (b, h, q block, kv block) step of dq [bq, D]; kv blocks are the inner axis."""
    meta, refs = _split_meta(refs, cfg)
    if cfg.kind == "softmax":
        lse_ref, di_ref, dq_ref, acc_ref = refs
    else:
        lse_ref = di_ref = None
        dq_ref, acc_ref = refs
    b, head, q_block, kv_block = (pl.program_id(axis) for axis in range(4))
    length, num_candidates = lengths_ref[b], candidates_ref[b]

    @pl.when(kv_block == 0)
    def _init():
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    @pl.when(_kv_block_is_live(q_block, kv_block, length, num_candidates, cfg))
    def _accumulate():
        q_lo, k_lo = q_block * cfg.block_q, kv_block * cfg.block_k
        k, v = (_zero_past(ref[...], k_lo, length) for ref in (k_ref, v_ref))
        q, d_out = (_zero_past(ref[...], q_lo, length) for ref in (q_ref, d_out_ref))
        logits, mask = _scores(q, k, q_lo=q_lo,
                               k_lo=k_lo, length=length,
                               num_candidates=num_candidates, head=head, slopes_ref=slopes_ref,
                               meta=meta, cfg=cfg)
        _, d_logits = _logits_grad(logits, mask, d_out, v, lse_ref, di_ref, length, cfg)
        acc_ref[...] += lax.dot(d_logits.astype(k.dtype), k, preferred_element_type=jnp.float32)

    @pl.when(kv_block == pl.num_programs(3) - 1)
    def _finish():
        dq_ref[...] = (acc_ref[...] * cfg.scale).astype(dq_ref.dtype)


def _dkv_kernel(lengths_ref, candidates_ref, slopes_ref, q_ref, k_ref, v_ref, d_out_ref, *refs,
                cfg):
    """One (b, h, kv block, q block) step of dk [bk, D] and dv [bk, Dv]; q blocks are inner."""
    meta, refs = _split_meta(refs, cfg)
    if cfg.kind == "softmax":
        lse_ref, di_ref, dk_ref, dv_ref, dk_acc_ref, dv_acc_ref = refs
    else:
        lse_ref = di_ref = None
        dk_ref, dv_ref, dk_acc_ref, dv_acc_ref = refs
    b, head, kv_block, q_block = (pl.program_id(axis) for axis in range(4))
    length, num_candidates = lengths_ref[b], candidates_ref[b]

    @pl.when(q_block == 0)
    def _init():
        dk_acc_ref[...] = jnp.zeros(dk_acc_ref.shape, jnp.float32)
        dv_acc_ref[...] = jnp.zeros(dv_acc_ref.shape, jnp.float32)

    @pl.when(_q_block_is_live(q_block, kv_block, length, num_candidates, cfg))
    def _accumulate():
        q_lo, k_lo = q_block * cfg.block_q, kv_block * cfg.block_k
        q, d_out = (_zero_past(ref[...], q_lo, length) for ref in (q_ref, d_out_ref))
        k, v = (_zero_past(ref[...], k_lo, length) for ref in (k_ref, v_ref))
        logits, mask = _scores(q, k, q_lo=q_lo,
                               k_lo=k_lo, length=length,
                               num_candidates=num_candidates, head=head, slopes_ref=slopes_ref,
                               meta=meta, cfg=cfg)
        weights, d_logits = _logits_grad(logits, mask, d_out, v, lse_ref, di_ref, length, cfg)
        dv_acc_ref[...] += lax.dot(weights.T.astype(d_out.dtype), d_out,
                                   preferred_element_type=jnp.float32)
        dk_acc_ref[...] += lax.dot(d_logits.T.astype(q.dtype), q,
                                   preferred_element_type=jnp.float32)

    @pl.when(q_block == pl.num_programs(3) - 1)
    def _finish():
        dk_ref[...] = (dk_acc_ref[...] * cfg.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_acc_ref[...].astype(dv_ref.dtype)


def _backward(cfg, q, k, v, meta, out, lse, d_out):
    """Kernel layout [B, H, S', *] -> (dq, dk, dv) like q, k, v."""
    batch, heads, seq, dim = q.shape
    value_dim = v.shape[-1]
    bq, bk = cfg.block_q, cfg.block_k
    prefetch, vectors = _prefetch_and_meta(meta)
    d_out = d_out.astype(v.dtype)
    row_inputs = []
    if cfg.kind == "softmax":
        di = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
        row_inputs = [lse, jnp.broadcast_to(di[..., None], lse.shape)]
    params = _CompilerParams(dimension_semantics=_DIMENSIONS)

    fetch_kv, fetch_q = _kv_map(cfg), _outer_map(bq)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg),
        grid_spec=_PrefetchScalarGridSpec(
            num_scalar_prefetch=3, grid=(batch, heads, seq // bq, seq // bk),
            in_specs=[_spec(bq, dim, fetch_q), _spec(bk, dim, fetch_kv),
                      _spec(bk, value_dim, fetch_kv), _spec(bq, value_dim, fetch_q)]
                     + _meta_specs(cfg, fetch_q, fetch_kv)
                     + [_spec(bq, NUM_LANES, fetch_q)] * len(row_inputs),
            out_specs=_spec(bq, dim, _OWN_BLOCK),
            scratch_shapes=[_VMEM((bq, dim), jnp.float32)]),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=params,
        interpret=cfg.interpret,
        name=f"genrank_attention_{cfg.kind}_dq",
    )(*prefetch, q, k, v, d_out, *vectors, *row_inputs)

    fetch_kv, fetch_q = _outer_map(bk), _q_map(cfg)
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, cfg=cfg),
        grid_spec=_PrefetchScalarGridSpec(
            num_scalar_prefetch=3, grid=(batch, heads, seq // bk, seq // bq),
            in_specs=[_spec(bq, dim, fetch_q), _spec(bk, dim, fetch_kv),
                      _spec(bk, value_dim, fetch_kv), _spec(bq, value_dim, fetch_q)]
                     + _meta_specs(cfg, fetch_q, fetch_kv)
                     + [_spec(bq, NUM_LANES, fetch_q)] * len(row_inputs),
            out_specs=[_spec(bk, dim, _OWN_BLOCK), _spec(bk, value_dim, _OWN_BLOCK)],
            scratch_shapes=[_VMEM((bk, dim), jnp.float32),
                            _VMEM((bk, value_dim), jnp.float32)]),
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=params,
        interpret=cfg.interpret,
        name=f"genrank_attention_{cfg.kind}_dkv",
    )(*prefetch, q, k, v, d_out, *vectors, *row_inputs)
    return dq, dk, dv


# --- public function -----------------------------------------------------------------------------

def attention(q, k, v, *, lengths, num_candidates, positions, timestamps, alibi_slopes,
              time_slopes, kind, scale, interpret, block_sizes):
    """[B, S, H, Dv]; arguments validated and defaulted by `genrank_jax.kernels.attention`.

    q, k: [B, S, H, D]; v: [B, S, H, Dv]; lengths, num_candidates: [B] int32; positions: [B, S]
    int32; timestamps: [B, S] float32; slopes: [H] float32 or None; `block_sizes`: a `BlockSizes`
    or None for `BlockSizes.for_device`.
    """
    batch, seq_len, heads, _ = q.shape
    if block_sizes is None:
        block_sizes = BlockSizes.for_device(seq_len=seq_len, interpret=bool(interpret))
    if not isinstance(block_sizes, BlockSizes):
        raise TypeError(f"block_sizes must be a pallas_tpu.BlockSizes or None, got {block_sizes!r}")
    if not interpret:
        block_sizes.check_compiles_for_tpu()
    cfg = _Config(kind=kind, scale=float(scale), block_q=block_sizes.block_q,
                  block_k=block_sizes.block_k, num_heads=heads,
                  with_alibi=alibi_slopes is not None, with_time=time_slopes is not None,
                  interpret=interpret)
    padded = round_up(seq_len, math.lcm(cfg.block_q, cfg.block_k))
    pad_tokens = lambda x, axis: jnp.pad(x, [(0, padded - seq_len if a == axis else 0)
                                             for a in range(x.ndim)])
    to_kernel = lambda x: pad_tokens(jnp.swapaxes(x, 1, 2), 2)  # [B, S, H, D] -> [B, H, S', D]
    zeros = jnp.zeros((heads,), jnp.float32)
    slopes = jnp.concatenate([zeros if alibi_slopes is None else alibi_slopes,
                              zeros if time_slopes is None else time_slopes])

    def query_and_key_vectors(x, present):
        if not present:
            return None, None
        x = pad_tokens(x, 1)
        return (jnp.broadcast_to(x[:, :, None], (batch, padded, NUM_LANES)),
                jnp.broadcast_to(x[:, None, :], (batch, NUM_SUBLANES, padded)))

    q_pos, k_pos = query_and_key_vectors(positions, cfg.with_alibi)
    q_time, k_time = query_and_key_vectors(timestamps, cfg.with_time)
    meta = (lengths, num_candidates, slopes, q_pos, q_time, k_pos, k_time)
    out = _flash(cfg, to_kernel(q), to_kernel(k), to_kernel(v), meta)
    return jnp.swapaxes(out[:, :, :seq_len], 1, 2)


# lengths, slopes, positions and timestamps (meta) are constants of the op: no cotangent
_flash = make_op(_forward, _backward)
