"""Hopper (sm_90) attention kernels in Pallas Mosaic GPU: TMA ring buffers and warp specialization.

Each CTA runs `compute_wgs` compute warpgroups (64 query rows each, WGMMA accumulators in
registers) and one memory warpgroup that streams tiles through a `stages`-deep shared-memory ring
with TMA: it refills a slot once every compute warpgroup has arrived on the slot's `consumed`
barrier, so loads of step s + stages overlap the matmuls and softmax of step s (FlashAttention-3's
producer/consumer split). With two compute warpgroups a schedule barrier alternates them, so one
runs its softmax while the other's WGMMAs occupy the tensor cores (FA3 "ping-pong").

The tile arithmetic (mask, ALiBi bias, online softmax, SiLU, gradients) is `_gpu_tiles`, the same
code the blocked kernels run; here it acts on full [rows, cols] tiles in the WGMMA layout.
Key steps follow `_gpu_tiles.kv_steps` / `q_blocks`, so fully masked blocks are never loaded.
Work per tile (`bench/kernel_ops.py` counts it against jax's FA3-style kernel): interior tiles,
where every pair is valid, run a loop without a mask (`interior_kv_steps` / `interior_q_blocks`;
rows past the length are zeroed once at the end); the other tiles build the mask from per-row
key limits (two compares per element); softmax logits come out in base 2 with log2(e) folded
into the per-head scalars; the forward and dq kernels launch the heaviest (last) query tiles
first. The one tile that crosses a sequence's length is cleaned of padding (NaN/Inf) in shared
memory before its WGMMAs (`_zero_rows_past`). With a bias every kernel carries two tile
maths and each sample's flag (`ordering.ordered_samples`) picks one at run time: the ordered path
(`_gpu_tiles.ordered_logits`: a per-key ALiBi add, no abs) or the general one. The dk/dv kernel
issues the dV and dP^T WGMMAs together on the dO tile, with one wait (`_dv_and_dp`).

Inputs are padded by the caller: S a multiple of compute_wgs * block and of the key block, head
dims multiples of 64 (128-byte swizzle of 16-bit rows), positions as f32 (exact below 2^24).
Only 16-bit inputs: WGMMA has no f32 x f32 -> f32 mode (f32 would run as TF32).

Reading map. Each kernel (`forward`; `backward` runs `_dq`, then `_dkv`) is one `_launch`: a grid
of CTAs over (heads, sequence tiles, batch) with `wgs` compute warpgroups and one memory
warpgroup each (the "wg" axis). A CTA, in order:

  _plan_query_cta / _plan_key_cta  its steps: the tiles of the other side that it sees
  _Cta.run                         the sample's flag picks the tile math (`_Path`)
  _Cta.split_roles                 warpgroup `wgs` produces, warpgroups 0..wgs-1 consume
  producer   `_producer` with `_stream_key_tiles` (forward, dq) or `_stream_query_tiles` (dk/dv):
             step s lands in ring slot s % stages, refilled when consumed[slot] has wgs arrivals
  consumers  `_load_resident`: the warpgroup's own tile, TMA'd once into buffer row `wg`;
             `_run_steps` over the steps (interior ones without a mask), one step being
               forward  `_forward_step`: `_forward_scores` (Q K^T, `_PingPong`) ->
                        `_online_weights` (softmax / SiLU) -> `_accumulate_pv` (acc += P V)
               dq       `_dq_step`: Q K^T -> dP = dO V^T -> dS -> dq += dS K
               dk/dv    `_dkv_step`: K Q^T -> `_transposed_weights` -> `_dv_and_dp` ->
                        `_transposed_dlogits` -> dk += dS^T Q
             and ending in barrier_arrive(consumed[slot]); then `_forward_epilogue`,
             `_dq_epilogue` or `_dkv_epilogue`: normalise or scale, `_store` (via SMEM, TMA)

Shared memory (`_ForwardSmem`, `_DqSmem`, `_DkvSmem`; the `_*Barriers` tuples beside them):
             resident, [wgs, ...] per warpgroup          ring, [stages, ...] per slot
  forward    q (out staged in q or o), lse, q meta       k, v, k meta
  dq         q (dq staged in q), do, lse, delta, q meta  k, v, k meta
  dk/dv      k, v (dk, dv staged there), k meta          q, do, lse and delta (softmax), q meta
A resident tile's `*_ready[wg]` barrier is armed and waited for by its own warpgroup; a ring
tile's `*_ready[slot]` is armed by the memory warpgroup and waited for by every compute
warpgroup, which then arrives on `consumed[slot]`; `schedule` (forward, two compute warpgroups)
alternates their turns on the tensor cores. Metadata rows (position, time) travel with their
tile under barriers of their own (`_TokenMeta`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from genrank_jax.kernels import _gpu_tiles as tiles


@dataclasses.dataclass(frozen=True)
class HopperTiling:
    block_q: int  # query rows per compute warpgroup (WGMMA M = 64)
    block_kv: int
    stages: int
    compute_wgs: int
    block_q_bwd: int
    block_kv_bwd: int
    lowering: str | None = None  # Mosaic GPU lowering semantics, "lane" | "warpgroup"; None: jax's default


# ---- jax version differences (0.10 -> 0.11 -> 0.12) ----
# 0.10 needs the index of plgpu.load (`idx`, no default); 0.11 deprecates it (default
# NotSpecified; index the ref instead); 0.12 removes it. 0.11 also deprecates
# plgpu.transpose_ref in favour of ref.transpose. Probed, never assumed: a probe that cannot
# tell falls back to the newer form instead of failing the import.
def _load_takes_index() -> bool:
    try:
        index = inspect.signature(plgpu.load).parameters.get("idx")
    except (TypeError, ValueError):  # no introspectable signature
        return False
    return index is not None and index.default is inspect.Parameter.empty


_LOAD_TAKES_INDEX = _load_takes_index()
_OLD_TRANSPOSE = jax.__version_info__ < (0, 11)


def _transposed(ref):
    if _OLD_TRANSPOSE:
        return plgpu.transpose_ref(ref, (1, 0))
    return ref.transpose((1, 0))


def _load(ref, layout):
    if _LOAD_TAKES_INDEX:
        return plgpu.load(ref, (), layout=layout)
    return plgpu.load(ref, layout=layout)


def lowering_modes() -> tuple[str, ...]:
    """The Mosaic GPU lowering semantics this jax offers (jax 0.10 defaults to lane, 0.11 to warpgroup)."""
    semantics = getattr(plgpu, "LoweringSemantics", None)
    return tuple(mode.name.lower() for mode in semantics) if semantics is not None else ()


def _compiler_params(tiling: HopperTiling):
    if tiling.lowering is None:
        return plgpu.CompilerParams(approx_math=True)
    semantics = plgpu.LoweringSemantics[tiling.lowering.capitalize()]
    return plgpu.CompilerParams(approx_math=True, lowering_semantics=semantics)


def _log1p_as_log(x, accuracy=None):
    del accuracy
    return jnp.log(1.0 + x)


def _ensure_log1p_lowering():
    """Mosaic GPU has no log1p rule (jax <= 0.11); lower it as log(1 + x) like its logistic rule.

    x = |t_i - t_j| >= 0 seconds here, where log(1 + x) is within an ulp-scale absolute error.
    """
    from jax._src.pallas.mosaic_gpu import lowering as mgpu_lowering
    rules = getattr(mgpu_lowering, "mosaic_lowering_rules", None)
    lower_fun = getattr(mgpu_lowering, "_lower_fun", None)
    if rules is None or lower_fun is None:
        return
    for table in rules.values():
        if lax.log1p_p not in table and lax.log_p in table:
            table[lax.log1p_p] = lower_fun(_log1p_as_log)


# ---------------------------------------------------------------- WGMMA tiles and products

_ROW = plgpu.Layout.WGMMA.reduce(1)  # one value per tile row
_COL = plgpu.Layout.WGMMA.reduce(0)  # one value per tile column
_SWIZZLE = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))


def _acc(shape):
    return plgpu.layout_cast(jnp.zeros(shape, jnp.float32), plgpu.Layout.WGMMA)


def _matmul(a, b, shape, accumulate=None):
    """WGMMA a @ b into a fresh [M, N] f32 accumulator (or onto `accumulate`)."""
    if accumulate is None:
        def scoped(acc_ref):
            plgpu.wgmma(acc_ref, a, b)
            return acc_ref[...]
        return pl.run_scoped(scoped, plgpu.ACC(shape, jnp.float32))

    def stateful(acc_ref):
        plgpu.wgmma(acc_ref, a, b)
    return pl.run_state(stateful)(plgpu.ACC.init(accumulate))


def _dv_and_dp(p_t, v_smem, do_smem, dv):
    """(dv + p_t @ dO, V @ dO^T): two WGMMAs on the same dO tile, issued together, one wait."""
    def both(refs):
        dv_ref, dp_ref = refs
        plgpu.wgmma(dv_ref, p_t, do_smem)
        plgpu.wgmma(dp_ref, v_smem, _transposed(do_smem))
    return pl.run_state(both)((plgpu.ACC.init(dv), plgpu.ACC.init(_acc(p_t.shape))))


def _zero_rows_past(ref, start, length):
    """Rows start + r >= length of a swizzled [rows, D] 16-bit SMEM tile set to 0.

    Padding may hold NaN or Inf and 0 * NaN is NaN inside a WGMMA, so a tile that crosses the
    length is cleaned in shared memory before its product (once per CTA: only one tile crosses).
    Both compute warpgroups may clean the same ring slot; they write identical values.
    """
    @pl.when(start + ref.shape[0] > length)
    def _clean():
        tile = _load(ref, plgpu.Layout.WGMMA)
        index = start + plgpu.broadcasted_iota(jnp.int32, tile.shape, 0, layout=plgpu.Layout.WGMMA)
        ref[...] = jnp.where(index < length, tile, jnp.zeros((), tile.dtype))
        plgpu.commit_smem()


# ---------------------------------------------------------------- a sample and its metadata

class _Sample:
    """Scalars of one (batch, head) read from GMEM, and the row/col metadata tiles."""

    def __init__(self, meta_refs, static):
        refs = list(meta_refs)
        self.lengths, self.candidates, self.positions, self.times = refs[:4]
        rest = refs[4:]
        self.batch, self.head = lax.axis_index("batch"), lax.axis_index("heads")
        self.length = self.lengths[self.batch]
        self.num_candidates = self.candidates[self.batch]
        self.alibi_slope = rest.pop(0)[self.head] if static.has_alibi else None
        self.time_slope = rest.pop(0)[self.head] if static.has_time else None
        self.ordered_flags = self.times_plus_one = self.key_bias = None
        if static.ordered_path:
            self.ordered_flags, self.times_plus_one = rest[:2]
            self.key_bias = rest[2] if static.has_alibi else None
        self.has_alibi, self.has_time, self.scale = static.has_alibi, static.has_time, static.scale
        self.kind = static.kind
        self.ordered_path = static.ordered_path

    def run(self, body):
        """`body(ordered)`: both tile maths are compiled, the sample's flag picks one."""
        if not self.ordered_path:
            body(False)
            return
        flag = self.ordered_flags[self.batch]
        pl.when(flag != 0)(lambda: body(True))
        pl.when(flag == 0)(lambda: body(False))

    def sources(self, queries: bool, ordered: bool):
        """(position, time) GMEM rows [S] a tile side's metadata is copied from (None: unused).
        On the ordered path both sides take the ALiBi term a p (`ordering.key_bias`) instead of
        the position (queries for SiLU only), and queries t + 1 instead of t."""
        position = self.positions.at[self.batch] if self.has_alibi else None
        time = self.times.at[self.batch] if self.has_time else None
        if ordered and self.has_alibi:  # queries need it for SiLU only (a p_i, subtracted)
            position = (self.key_bias.at[self.batch, self.head]
                        if not queries or self.kind == "silu" else None)
        if ordered and queries and self.has_time:
            time = self.times_plus_one.at[self.batch]
        return position, time

    def scores(self, qk, q_start, k_start, q_meta, k_meta, kind, masked, transposed=False,
               ordered=False):
        """(logits, mask or None) of a tile: base-2 logits for softmax, natural for SiLU; no mask
        on interior tiles. `q_meta`, `k_meta` are (position, time) vectors (None: absent term;
        `ordered`: (a p_i or None, t + 1), (a p_j, time): `sources`, `_gpu_tiles.ordered_logits`). The
        mask is built from per-row vectors (`_gpu_tiles.key_limits`): two compares per element."""
        shape = qk.shape
        q_axis = 1 if transposed else 0
        k_axis = 1 - q_axis
        spread = lambda x, axis: None if x is None else lax.broadcast_in_dim(x, shape, (axis,))
        q_pos, q_time = q_meta
        k_pos, k_time = k_meta
        if ordered:
            logits = tiles.ordered_logits(
                qk, key_bias=spread(k_pos, k_axis), query_bias=spread(q_pos, q_axis),
                query_time_plus_one=spread(q_time, q_axis), key_time=spread(k_time, k_axis),
                time_slope=self.time_slope, scale=self.scale, base2=kind == "softmax")
        else:
            logits = tiles.tile_logits(
                qk, q_pos=spread(q_pos, q_axis), k_pos=spread(k_pos, k_axis),
                q_time=spread(q_time, q_axis), k_time=spread(k_time, k_axis),
                alibi_slope=self.alibi_slope, time_slope=self.time_slope, scale=self.scale,
                base2=kind == "softmax")
        if not masked:
            return logits, None
        q_index = q_start + self.iota(shape[q_axis], q_axis)
        k_index = k_start + self.iota(shape[k_axis], k_axis)
        last_key, own_key = tiles.key_limits(q_index, self.length, self.num_candidates)
        return logits, tiles.pair_mask(spread(k_index, k_axis), spread(last_key, q_axis),
                                       spread(own_key, q_axis))

    @staticmethod
    def iota(size, axis):
        """[size] int32 0..size-1 in the layout of tile axis `axis` (rows: _ROW, columns: _COL)."""
        return plgpu.broadcasted_iota(jnp.int32, (size,), 0, layout=_ROW if axis == 0 else _COL)

    def row_valid(self, start, size):
        """[size] bool in the row layout: tokens start..start+size before the length."""
        return start + self.iota(size, 0) < self.length

    def inverse_length(self):
        return 1.0 / jnp.maximum(self.length, 1).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class _TokenMeta:
    """One tile side's per-token bias rows in SMEM: where they come from and where they land.

    `sources` are the (position, time) GMEM rows [S] of `_Sample.sources` (None: a term this call
    has not, so nothing is copied or waited for); `pos_smem` / `time_smem` are [n, size] f32 buffers
    and `ready` their barriers, one per buffer row (a warpgroup's resident tile or a ring slot).
    """
    sources: tuple
    pos_smem: object
    time_smem: object
    ready: tuple

    def copy(self, start, size: int, index) -> None:
        """TMA tokens start..start+size of each present term into buffer row `index`."""
        for row, smem, barrier in zip(self.sources, (self.pos_smem, self.time_smem), self.ready):
            if row is not None:
                plgpu.copy_gmem_to_smem(row.at[pl.ds(start, size)], smem.at[index],
                                        barrier.at[index])

    def read(self, index, layout):
        """(position, time) vectors of buffer row `index` in `layout`, once their TMAs landed."""
        for row, barrier in zip(self.sources, self.ready):
            if row is not None:
                plgpu.barrier_wait(barrier.at[index])
        pos_row, time_row = self.sources
        pos = _load(self.pos_smem.at[index], layout) if pos_row is not None else None
        time = _load(self.time_smem.at[index], layout) if time_row is not None else None
        return pos, time


def _num_meta(static):
    return 4 + static.has_alibi + static.has_time + static.ordered_path * (2 + static.has_alibi)


def _meta_args(meta):
    """The metadata arrays in the kernels' order, absent terms (None) left out."""
    lengths, candidates, positions, *rest = meta
    # TMA'd next to the f32 times; exact below 2^24 (positions come shifted: the sample's span)
    positions = positions.astype(jnp.float32)
    return [x for x in (lengths, candidates, positions, *rest) if x is not None]


# ---------------------------------------------------------------- a launch and its CTAs

@dataclasses.dataclass(frozen=True)
class _Dims:
    """Trace-time sizes of one kernel launch."""
    batch: int
    seq_len: int
    heads: int
    head_dim: int
    value_dim: int
    dtype: jnp.dtype
    block_q: int  # query rows of a tile
    block_kv: int  # key rows of a tile
    stages: int  # depth of the TMA ring
    wgs: int  # compute warpgroups; warpgroup number `wgs` is the memory warpgroup

    @classmethod
    def of(cls, tiling: HopperTiling, q, v, backward: bool) -> _Dims:
        batch, seq_len, heads, head_dim = q.shape
        block_q, block_kv = ((tiling.block_q_bwd, tiling.block_kv_bwd) if backward
                             else (tiling.block_q, tiling.block_kv))
        return cls(batch, seq_len, heads, head_dim, v.shape[-1], q.dtype, block_q, block_kv,
                   tiling.stages, tiling.compute_wgs)


def _tiles_smem(count: int, rows: int, dim: int, dtype):
    """`count` swizzled [rows, dim] 16-bit tiles (WGMMA operands)."""
    return plgpu.SMEM((count, rows, dim), dtype, transforms=_SWIZZLE)


def _rows_smem(count: int, rows: int, present: bool = True):
    """`count` f32 vectors of `rows` (metadata, softmax statistics); None for an absent term."""
    return plgpu.SMEM((count, rows), jnp.float32) if present else None


def _launch(static, dims: _Dims, cta_body, gmem_type, out_type, scratch, grid_axis: str):
    """plgpu.kernel running `cta_body(cta)` on a grid of CTAs over (heads, `grid_axis`: the
    sequence in CTA tiles of `dims.wgs` blocks, batch), each with `dims.wgs` compute warpgroups
    and one memory warpgroup. The kernel's refs are the metadata (`_meta_args`), the GMEM
    operands and results (`gmem_type`), then the `scratch` SMEM and barriers."""
    split = _num_meta(static)
    n_gmem = len(gmem_type._fields)

    def kernel(*refs):  # plgpu.kernel names the kernel after this function
        cta_body(_Cta(static, dims, _Sample(refs[:split], static), lax.axis_index("wg"),
                      gmem_type(*refs[split:split + n_gmem]), *refs[split + n_gmem:]))

    cta_rows = dims.wgs * (dims.block_kv if grid_axis == "kv_seq" else dims.block_q)
    return plgpu.kernel(
        kernel, out_type=out_type, scratch_types=scratch,
        grid=(dims.heads, dims.seq_len // cta_rows, dims.batch),
        grid_names=("heads", grid_axis, "batch"),
        num_threads=dims.wgs + 1, thread_name="wg",
        compiler_params=_compiler_params(static.tiling),
    )


@dataclasses.dataclass(frozen=True)
class _Path:
    """One of the two tile maths a sample may take (`_Sample.run`): `ordered` or the general one,
    and the query / key metadata that path reads (`_Sample.sources`)."""
    ordered: bool
    queries: _TokenMeta
    keys: _TokenMeta


@dataclasses.dataclass(frozen=True)
class _Cta:
    """What every helper of a kernel reads: trace-time sizes and flags, the sample's scalars, this
    thread's warpgroup and the kernel's refs (each kernel's `_*Gmem`, `_*Smem`, `_*Barriers`)."""
    static: object  # _gpu_blocked.Static
    dims: _Dims
    sample: _Sample
    wg: object  # this warpgroup's index (traced); `dims.wgs`: the memory warpgroup
    gmem: tuple
    smem: tuple
    barriers: tuple

    def run(self, body) -> None:
        """`body(path)` on the tile math the sample's flag picks at run time (both are compiled)."""
        def on_path(ordered: bool):
            sample, smem, barriers = self.sample, self.smem, self.barriers
            queries = _TokenMeta(sample.sources(queries=True, ordered=ordered),
                                 smem.q_pos, smem.q_time, barriers.q_meta_ready)
            keys = _TokenMeta(sample.sources(queries=False, ordered=ordered),
                              smem.k_pos, smem.k_time, barriers.k_meta_ready)
            body(_Path(ordered, queries, keys))
        self.sample.run(on_path)

    def split_roles(self, compute, memory) -> None:
        """Warpgroups 0..wgs-1 run `compute()`, warpgroup `wgs` runs `memory()`."""
        pl.when(self.wg < self.dims.wgs)(compute)
        pl.when(self.wg == self.dims.wgs)(memory)


class _KeySteps(NamedTuple):
    """The key tiles a query CTA visits (`_gpu_tiles.kv_steps`), in `count` steps: `n_first` from
    key tile 0 on, then the rest from key tile `second_start` on."""
    n_first: jax.Array
    second_start: jax.Array
    count: jax.Array

    def key_start(self, step, block_kv: int):
        return tiles.kv_block(step, self.n_first, self.second_start) * block_kv


def _plan_query_cta(cta: _Cta) -> tuple[jax.Array, _KeySteps]:
    """(first query row, key steps) of a forward or dq CTA. The last query tiles see the most keys,
    so they launch first (fewer stragglers at the end)."""
    dims, sample = cta.dims, cta.sample
    cta_rows = dims.wgs * dims.block_q
    cta_start = (dims.seq_len // cta_rows - 1 - lax.axis_index("q_seq")) * cta_rows
    return cta_start, _KeySteps(*tiles.kv_steps(cta_start, cta_rows, dims.block_kv, sample.length,
                                                sample.num_candidates))


# ---------------------------------------------------------------- the pipeline: producer, consumers

def _slot(step, stages: int):
    """The ring slot of step `step` (the memory warpgroup fills them in step order)."""
    return lax.rem(step, jnp.int32(stages))


def _producer(n_steps, stages: int, consumed, issue):
    """Memory warpgroup: fill the ring, then refill each slot once all consumers released it."""
    plgpu.set_max_registers(40, action="decrease")
    for slot in range(stages):
        @pl.when(slot < n_steps)
        def _prologue():
            issue(jnp.int32(slot), slot)  # noqa: B023 - pl.when traces the body at once, in this iteration

    @pl.loop(0, jnp.maximum(n_steps - stages, 0))
    def _refill(step):
        slot = _slot(step, stages)
        plgpu.barrier_wait(consumed.at[slot])
        issue(step + stages, slot)


def _stream_key_tiles(cta: _Cta, keys: _TokenMeta, steps: _KeySteps) -> None:
    """The memory warpgroup of the forward and dq kernels: per key step, the K tile, the keys'
    metadata and the V tile into the step's ring slot (K first: it is needed first)."""
    dims, sample, smem, barriers = cta.dims, cta.sample, cta.smem, cta.barriers

    def issue(step, slot):
        k_start = steps.key_start(step, dims.block_kv)
        rows = (sample.batch, pl.ds(k_start, dims.block_kv), sample.head)
        plgpu.copy_gmem_to_smem(cta.gmem.k.at[rows], smem.k.at[slot], barriers.k_ready.at[slot])
        keys.copy(k_start, dims.block_kv, slot)
        plgpu.copy_gmem_to_smem(cta.gmem.v.at[rows], smem.v.at[slot], barriers.v_ready.at[slot])
    _producer(steps.count, dims.stages, barriers.consumed, issue)


def _claim_compute_registers(wgs: int) -> None:
    """Compute warpgroups take the registers the memory warpgroup gives up (`_producer`)."""
    plgpu.set_max_registers(232 if wgs == 2 else 240, action="increase")


@dataclasses.dataclass(frozen=True)
class _ResidentTile:
    """A compute warpgroup's own tile, loaded once: its SMEM buffer, first row and metadata
    vectors (queries in the forward and dq kernels, keys in the dk/dv kernel)."""
    smem: object
    start: jax.Array
    meta: tuple


def _load_resident(copies, meta: _TokenMeta, start, size: int, wg) -> None:
    """TMA a compute warpgroup's resident tiles, `copies` of (GMEM window, SMEM buffer, barrier
    array), and its metadata rows into buffer row `wg`; wait for the tiles (the metadata is
    waited for where it is read, `_TokenMeta.read`)."""
    for source, target, ready in copies:
        plgpu.copy_gmem_to_smem(source, target, ready.at[wg])
    meta.copy(start, size, wg)
    for _, _, ready in copies:
        plgpu.barrier_wait(ready.at[wg])


def _await_tile(ring, ready, slot, start, length, clean: bool):
    """Ring slot `slot` once its TMA landed; on a masked step, where the tile may cross the length,
    cleaned of padding first (`_zero_rows_past`)."""
    plgpu.barrier_wait(ready.at[slot])
    tile = ring.at[slot]
    if clean:
        _zero_rows_past(tile, start, length)
    return tile


def _run_steps(step_fn, ranges, carry):
    """`step_fn(step, carry, masked=...)` over consecutive step ranges (lo, hi, masked): interior
    tiles, every pair valid, skip the mask."""
    for lo, hi, masked in ranges:
        carry = lax.fori_loop(lo, hi, functools.partial(step_fn, masked=masked), carry)
    return carry


def _store(outputs) -> None:
    """The epilogue's write-out: each (value, SMEM buffer, GMEM window) staged in SMEM (cast to the
    buffer's dtype), then all TMA'd out together; waits, as the CTA's SMEM dies with it."""
    for value, smem, _ in outputs:
        smem[...] = value.astype(smem.dtype)
    plgpu.commit_smem()
    for _, smem, gmem in outputs:
        plgpu.copy_smem_to_gmem(smem, gmem)
    plgpu.wait_smem_to_gmem(0)


# ---------------------------------------------------------------- forward

class _ForwardGmem(NamedTuple):
    """The forward kernel's GMEM refs after the metadata: inputs, then outputs."""
    q: object  # [B, S, H, D]
    k: object  # [B, S, H, D]
    v: object  # [B, S, H, Dv]
    out: object  # [B, S, H, Dv]
    lse: object  # [B, H, S] f32, base 2


class _ForwardSmem(NamedTuple):
    """Per compute warpgroup ([wgs, ...]: resident) or per ring slot ([stages, ...]: streamed)."""
    q: object  # [wgs, block_q, D] query tiles
    o: object  # [wgs, block_q, Dv] output staging; None when Dv == D: staged in `q`
    k: object  # [stages, block_kv, D] key ring
    v: object  # [stages, block_kv, Dv] value ring
    q_pos: object  # [wgs, block_q] f32 query position (or ALiBi) rows; None without ALiBi
    q_time: object  # [wgs, block_q] f32 query times; None without a time bias
    k_pos: object  # [stages, block_kv] f32 key position (or ALiBi) rows
    k_time: object  # [stages, block_kv] f32 key times
    lse: object  # [wgs, block_q] f32 lse2 staging


class _ForwardBarriers(NamedTuple):
    q_ready: object  # [wgs]: the warpgroup's query tile landed
    q_meta_ready: object  # ([wgs], [wgs]): its position, time rows landed
    k_ready: object  # [stages]: the slot's key tile landed
    v_ready: object  # [stages]: the slot's value tile landed
    k_meta_ready: object  # ([stages], [stages]): the slot's key position, time rows landed
    consumed: object  # [stages], wgs arrivals: every compute warpgroup is done with the slot
    schedule: object  # wgs arrivals: the ping-pong of two compute warpgroups (`_PingPong`)


@dataclasses.dataclass(frozen=True)
class _PingPong:
    """FA3's ping-pong of two compute warpgroups on the `schedule` barrier: one runs its softmax
    while the other's WGMMAs hold the tensor cores. With one compute warpgroup, no-ops."""
    schedule: object
    active: bool

    def arrive(self) -> None:
        if self.active:
            plgpu.barrier_arrive(self.schedule)

    def wait(self) -> None:
        if self.active:
            plgpu.barrier_wait(self.schedule)

    def sync(self) -> None:
        """Hand the turn over and take it back: the other warpgroup runs in between."""
        self.arrive()
        self.wait()


def _forward_scratch(static, dims: _Dims) -> tuple[_ForwardSmem, _ForwardBarriers]:
    wgs, stages, block_q, block_kv = dims.wgs, dims.stages, dims.block_q, dims.block_kv
    smem = _ForwardSmem(
        q=_tiles_smem(wgs, block_q, dims.head_dim, dims.dtype),
        o=(None if dims.value_dim == dims.head_dim
           else _tiles_smem(wgs, block_q, dims.value_dim, dims.dtype)),
        k=_tiles_smem(stages, block_kv, dims.head_dim, dims.dtype),
        v=_tiles_smem(stages, block_kv, dims.value_dim, dims.dtype),
        q_pos=_rows_smem(wgs, block_q, static.has_alibi),
        q_time=_rows_smem(wgs, block_q, static.has_time),
        k_pos=_rows_smem(stages, block_kv, static.has_alibi),
        k_time=_rows_smem(stages, block_kv, static.has_time),
        lse=_rows_smem(wgs, block_q))
    barriers = _ForwardBarriers(
        q_ready=plgpu.Barrier(num_barriers=wgs),
        q_meta_ready=(plgpu.Barrier(num_barriers=wgs),) * 2,
        k_ready=plgpu.Barrier(num_barriers=stages),
        v_ready=plgpu.Barrier(num_barriers=stages),
        k_meta_ready=(plgpu.Barrier(num_barriers=stages),) * 2,
        consumed=plgpu.Barrier(num_arrivals=wgs, num_barriers=stages),
        schedule=plgpu.Barrier(num_arrivals=wgs))
    return smem, barriers


def forward(static, q, k, v, meta):
    """(out [B, S, H, Dv], lse2 [B, H, S]) on padded 16-bit inputs; see `_gpu_blocked.forward`."""
    _ensure_log1p_lowering()
    dims = _Dims.of(static.tiling, q, v, backward=False)
    out_type = (jax.ShapeDtypeStruct((dims.batch, dims.seq_len, dims.heads, dims.value_dim),
                                     dims.dtype),
                jax.ShapeDtypeStruct((dims.batch, dims.heads, dims.seq_len), jnp.float32))
    return _launch(static, dims, _forward_cta, _ForwardGmem, out_type,
                   _forward_scratch(static, dims), "q_seq")(*_meta_args(meta), q, k, v)


def _forward_cta(cta: _Cta) -> None:
    """One CTA: `wgs` query tiles against the key tiles they see, streamed by the memory
    warpgroup through the ring."""
    cta_start, steps = _plan_query_cta(cta)
    pingpong = _PingPong(cta.barriers.schedule, cta.dims.wgs == 2)

    def body(path: _Path):
        cta.split_roles(lambda: _forward_compute(cta, path, cta_start, steps, pingpong),
                        lambda: _stream_key_tiles(cta, path.keys, steps))
    cta.run(body)


def _forward_compute(cta: _Cta, path: _Path, cta_start, steps: _KeySteps,
                     pingpong: _PingPong) -> None:
    """A compute warpgroup: load its query tile, run it over the key steps (interior tiles first,
    without a mask), normalise and store."""
    dims, sample, smem = cta.dims, cta.sample, cta.smem
    _claim_compute_registers(dims.wgs)
    q_smem = smem.q.at[cta.wg]
    q_start = cta_start + cta.wg * dims.block_q
    _load_resident(((cta.gmem.q.at[sample.batch, pl.ds(q_start, dims.block_q), sample.head],
                     q_smem, cta.barriers.q_ready),),
                   path.queries, q_start, dims.block_q, cta.wg)
    tile = _ResidentTile(q_smem, q_start, path.queries.read(cta.wg, _ROW))

    init = (_acc((dims.block_q, dims.value_dim)),
            plgpu.layout_cast(jnp.full((dims.block_q,), tiles.M_INIT, jnp.float32), _ROW),
            plgpu.layout_cast(jnp.zeros((dims.block_q,), jnp.float32), _ROW))
    n_interior = tiles.interior_kv_steps(q_start, dims.block_kv, sample.length,
                                         sample.num_candidates, steps.n_first)
    # warpgroup 1 starts half a turn behind: its first Q K^T waits until warpgroup 0 issued its own
    pl.when(cta.wg == 1)(pingpong.sync)
    step = functools.partial(_forward_step, cta, path, tile, steps, pingpong)
    acc, m, l = _run_steps(step, ((0, n_interior, False), (n_interior, steps.count, True)), init)
    pl.when(cta.wg == 0)(pingpong.sync)  # the arrival warpgroup 1's last wait needs
    _forward_epilogue(cta, q_start, acc, m, l)


def _forward_step(cta: _Cta, path: _Path, tile: _ResidentTile, steps: _KeySteps,
                  pingpong: _PingPong, step, carry, masked: bool):
    """Key step `step`: the scores of the query tile against the slot's key tile, their softmax
    (or SiLU) weights P, acc += P V; then the slot is released to the memory warpgroup."""
    acc, m, l = carry
    slot = _slot(step, cta.dims.stages)
    k_start = steps.key_start(step, cta.dims.block_kv)
    logits, mask = _forward_scores(cta, path, tile, pingpong, slot, k_start, masked)
    p, acc, m, l = _online_weights(cta.static.kind, logits, mask, acc, m, l)
    acc = _accumulate_pv(cta, pingpong, p, slot, k_start, masked, acc)
    plgpu.barrier_arrive(cta.barriers.consumed.at[slot])
    return acc, m, l


def _forward_scores(cta: _Cta, path: _Path, tile: _ResidentTile, pingpong: _PingPong, slot,
                    k_start, masked: bool):
    """(logits, mask or None) of the query tile against the key tile in `slot`: the Q K^T WGMMA,
    under which the other warpgroup runs its softmax, then bias and mask (`_Sample.scores`)."""
    dims = cta.dims
    plgpu.barrier_wait(cta.barriers.k_ready.at[slot])

    def scores(acc_ref):
        plgpu.wgmma(acc_ref, tile.smem, _transposed(cta.smem.k.at[slot]))
        pingpong.sync()  # let the other warpgroup's softmax run under this WGMMA
        return acc_ref[...]
    qk = pl.run_scoped(scores, plgpu.ACC((dims.block_q, dims.block_kv), jnp.float32))
    k_meta = path.keys.read(slot, _COL)
    return cta.sample.scores(qk, tile.start, k_start, tile.meta, k_meta, cta.static.kind, masked,
                             ordered=path.ordered)


def _online_weights(kind: str, logits, mask, acc, m, l):
    """(p, acc, m, l): softmax weights against the running row max m and sum l, with acc rescaled
    to the new max; SiLU's weights need no running state (m, l pass through)."""
    if kind == "softmax":
        p, correction, m, l = tiles.softmax_update(logits, mask, m, l)
        acc = acc * lax.broadcast_in_dim(correction, acc.shape, (0,))
    else:
        p = tiles.silu_weights(logits, mask)
    return p, acc, m, l


def _accumulate_pv(cta: _Cta, pingpong: _PingPong, p, slot, k_start, masked: bool, acc):
    """acc + P V with the value tile in `slot`, once the tensor cores are this warpgroup's."""
    pingpong.arrive()  # softmax done: the other warpgroup may issue its WGMMAs
    v_tile = _await_tile(cta.smem.v, cta.barriers.v_ready, slot, k_start, cta.sample.length,
                         clean=masked)
    pingpong.wait()  # the tensor cores are this warpgroup's again
    return _matmul(p.astype(cta.dims.dtype), v_tile, None, accumulate=acc)


def _forward_epilogue(cta: _Cta, q_start, acc, m, l) -> None:
    """Normalise (softmax: by l, giving lse2 too; SiLU: by the length), zero the rows past the
    length, and store out and lse2. When Dv == D, out is staged in the query tile's buffer."""
    dims, sample, smem, gmem = cta.dims, cta.sample, cta.smem, cta.gmem
    row_valid = sample.row_valid(q_start, dims.block_q)
    if cta.static.kind == "softmax":
        out, lse2 = tiles.softmax_finish(acc, m, l, row_valid)
    else:
        out = tiles.zero_rows(acc * sample.inverse_length(), row_valid)
        lse2 = plgpu.layout_cast(jnp.zeros((dims.block_q,), jnp.float32), _ROW)
    o_smem = (smem.q if smem.o is None else smem.o).at[cta.wg]
    rows = pl.ds(q_start, dims.block_q)
    _store(((out, o_smem, gmem.out.at[sample.batch, rows, sample.head]),
            (lse2, smem.lse.at[cta.wg], gmem.lse.at[sample.batch, sample.head, rows])))


# ---------------------------------------------------------------- backward: dq

def backward(static, q, k, v, meta, out, lse2, dout):
    """(dq, dk, dv) on padded 16-bit inputs; delta = rowsum(out * dout) is one fused XLA op."""
    _ensure_log1p_lowering()
    dout = dout.astype(q.dtype)
    if static.kind == "softmax":
        delta = jnp.einsum("bshd,bshd->bhs", out.astype(jnp.float32), dout.astype(jnp.float32))
    else:
        delta = jnp.zeros_like(lse2)
    dq = _dq(static, q, k, v, meta, dout, lse2, delta)
    dk, dv = _dkv(static, q, k, v, meta, dout, lse2, delta)
    return dq, dk, dv


class _DqGmem(NamedTuple):
    """The dq kernel's GMEM refs after the metadata: inputs, then the output."""
    q: object  # [B, S, H, D]
    k: object  # [B, S, H, D]
    v: object  # [B, S, H, Dv]
    do: object  # [B, S, H, Dv] dout
    lse: object  # [B, H, S] f32 lse2 (the forward's, base 2)
    delta: object  # [B, H, S] f32 rowsum(out * dout)
    dq: object  # [B, S, H, D]


class _DqSmem(NamedTuple):
    """Per compute warpgroup ([wgs, ...]: resident) or per ring slot ([stages, ...]: streamed)."""
    q: object  # [wgs, block_q, D] query tiles; dq is staged here at the end
    do: object  # [wgs, block_q, Dv] dout tiles
    lse: object  # [wgs, block_q] f32 lse2 rows
    delta: object  # [wgs, block_q] f32 delta rows
    q_pos: object  # [wgs, block_q] f32 query position (or ALiBi) rows; None without ALiBi
    q_time: object  # [wgs, block_q] f32 query times; None without a time bias
    k: object  # [stages, block_kv, D] key ring
    v: object  # [stages, block_kv, Dv] value ring
    k_pos: object  # [stages, block_kv] f32 key position (or ALiBi) rows
    k_time: object  # [stages, block_kv] f32 key times


class _DqBarriers(NamedTuple):
    q_ready: object  # ([wgs],) * 4: the warpgroup's q, dout, lse2, delta landed
    q_meta_ready: object  # ([wgs], [wgs]): its position, time rows landed
    k_ready: object  # [stages]: the slot's key tile landed
    v_ready: object  # [stages]: the slot's value tile landed
    k_meta_ready: object  # ([stages], [stages]): the slot's key position, time rows landed
    consumed: object  # [stages], wgs arrivals: every compute warpgroup is done with the slot


def _dq_scratch(static, dims: _Dims) -> tuple[_DqSmem, _DqBarriers]:
    wgs, stages, block_q, block_kv = dims.wgs, dims.stages, dims.block_q, dims.block_kv
    smem = _DqSmem(
        q=_tiles_smem(wgs, block_q, dims.head_dim, dims.dtype),
        do=_tiles_smem(wgs, block_q, dims.value_dim, dims.dtype),
        lse=_rows_smem(wgs, block_q),
        delta=_rows_smem(wgs, block_q),
        q_pos=_rows_smem(wgs, block_q, static.has_alibi),
        q_time=_rows_smem(wgs, block_q, static.has_time),
        k=_tiles_smem(stages, block_kv, dims.head_dim, dims.dtype),
        v=_tiles_smem(stages, block_kv, dims.value_dim, dims.dtype),
        k_pos=_rows_smem(stages, block_kv, static.has_alibi),
        k_time=_rows_smem(stages, block_kv, static.has_time))
    barriers = _DqBarriers(
        q_ready=(plgpu.Barrier(num_barriers=wgs),) * 4,
        q_meta_ready=(plgpu.Barrier(num_barriers=wgs),) * 2,
        k_ready=plgpu.Barrier(num_barriers=stages),
        v_ready=plgpu.Barrier(num_barriers=stages),
        k_meta_ready=(plgpu.Barrier(num_barriers=stages),) * 2,
        consumed=plgpu.Barrier(num_arrivals=wgs, num_barriers=stages))
    return smem, barriers


def _dq(static, q, k, v, meta, dout, lse2, delta):
    dims = _Dims.of(static.tiling, q, v, backward=True)
    out_type = jax.ShapeDtypeStruct(q.shape, dims.dtype)
    return _launch(static, dims, _dq_cta, _DqGmem, out_type, _dq_scratch(static, dims),
                   "q_seq")(*_meta_args(meta), q, k, v, dout, lse2, delta)


def _dq_cta(cta: _Cta) -> None:
    """One CTA: `wgs` query tiles, each gathering dq over the key tiles it sees (the forward's
    schedule), streamed by the memory warpgroup through the ring."""
    cta_start, steps = _plan_query_cta(cta)

    def body(path: _Path):
        cta.split_roles(lambda: _dq_compute(cta, path, cta_start, steps),
                        lambda: _stream_key_tiles(cta, path.keys, steps))
    cta.run(body)


def _dq_compute(cta: _Cta, path: _Path, cta_start, steps: _KeySteps) -> None:
    """A compute warpgroup: load its query, dout, lse2 and delta rows, gather dq over the key
    steps (interior tiles first, without a mask), scale and store."""
    dims, sample, smem, gmem, wg = cta.dims, cta.sample, cta.smem, cta.gmem, cta.wg
    _claim_compute_registers(dims.wgs)
    q_start = cta_start + wg * dims.block_q
    rows = (sample.batch, pl.ds(q_start, dims.block_q), sample.head)
    stat = (sample.batch, sample.head, pl.ds(q_start, dims.block_q))
    q_ready, do_ready, lse_ready, delta_ready = cta.barriers.q_ready
    _load_resident(((gmem.q.at[rows], smem.q.at[wg], q_ready),
                    (gmem.do.at[rows], smem.do.at[wg], do_ready),
                    (gmem.lse.at[stat], smem.lse.at[wg], lse_ready),
                    (gmem.delta.at[stat], smem.delta.at[wg], delta_ready)),
                   path.queries, q_start, dims.block_q, wg)
    tile = _ResidentTile(smem.q.at[wg], q_start, path.queries.read(wg, _ROW))
    stats = (_load(smem.lse.at[wg], _ROW), _load(smem.delta.at[wg], _ROW))  # (lse2, delta)

    n_interior = tiles.interior_kv_steps(q_start, dims.block_kv, sample.length,
                                         sample.num_candidates, steps.n_first)
    step = functools.partial(_dq_step, cta, path, tile, smem.do.at[wg], stats, steps)
    dq = _run_steps(step, ((0, n_interior, False), (n_interior, steps.count, True)),
                    _acc((dims.block_q, dims.head_dim)))
    _dq_epilogue(cta, q_start, dq)


def _dq_step(cta: _Cta, path: _Path, tile: _ResidentTile, do_smem, stats, steps: _KeySteps,
             step, dq, masked: bool):
    """Key step `step`: the query tile's scores against the slot's key tile, dP = dO V^T, the
    logits' gradient dS, dq += dS K; then the slot is released to the memory warpgroup."""
    dims, sample, smem, barriers = cta.dims, cta.sample, cta.smem, cta.barriers
    slot = _slot(step, dims.stages)
    k_start = steps.key_start(step, dims.block_kv)
    k_tile = _await_tile(smem.k, barriers.k_ready, slot, k_start, sample.length, clean=masked)
    qk = _matmul(tile.smem, _transposed(k_tile), (dims.block_q, dims.block_kv))
    k_meta = path.keys.read(slot, _COL)
    logits, mask = sample.scores(qk, tile.start, k_start, tile.meta, k_meta, cta.static.kind,
                                 masked, ordered=path.ordered)
    v_tile = _await_tile(smem.v, barriers.v_ready, slot, k_start, sample.length, clean=masked)
    dp = _matmul(do_smem, _transposed(v_tile), (dims.block_q, dims.block_kv))
    if cta.static.kind == "softmax":
        lse2, delta = stats
        _, dlogits = tiles.softmax_grads(logits, mask, lse2, delta, dp)
    else:
        _, dlogits = tiles.silu_grads(logits, mask, dp)
    dq = _matmul(dlogits.astype(dims.dtype), k_tile, None, accumulate=dq)
    plgpu.barrier_arrive(barriers.consumed.at[slot])
    return dq


def _dq_epilogue(cta: _Cta, q_start, dq) -> None:
    """Scale dq (SiLU: also by 1 / length), zero the rows past the length and store it, staged in
    the query tile's buffer (Q is no longer read)."""
    dims, sample = cta.dims, cta.sample
    # rows past the length ran through unmasked interior tiles: drop what they gathered
    dq = tiles.zero_rows(dq, sample.row_valid(q_start, dims.block_q)) * cta.static.scale
    if cta.static.kind == "silu":
        dq = dq * sample.inverse_length()
    rows = (sample.batch, pl.ds(q_start, dims.block_q), sample.head)
    _store(((dq, cta.smem.q.at[cta.wg], cta.gmem.dq.at[rows]),))


# ---------------------------------------------------------------- backward: dk, dv

class _DkvGmem(NamedTuple):
    """The dk/dv kernel's GMEM refs after the metadata: inputs, then outputs."""
    q: object  # [B, S, H, D]
    k: object  # [B, S, H, D]
    v: object  # [B, S, H, Dv]
    do: object  # [B, S, H, Dv] dout
    lse: object  # [B, H, S] f32 lse2 (the forward's, base 2)
    delta: object  # [B, H, S] f32 rowsum(out * dout)
    dk: object  # [B, S, H, D]
    dv: object  # [B, S, H, Dv]


class _DkvSmem(NamedTuple):
    """Per compute warpgroup ([wgs, ...]: resident) or per ring slot ([stages, ...]: streamed)."""
    k: object  # [wgs, block_kv, D] key tiles; dk is staged here at the end
    v: object  # [wgs, block_kv, Dv] value tiles; dv is staged here at the end
    k_pos: object  # [wgs, block_kv] f32 key position (or ALiBi) rows; None without ALiBi
    k_time: object  # [wgs, block_kv] f32 key times; None without a time bias
    q: object  # [stages, block_q, D] query ring
    do: object  # [stages, block_q, Dv] dout ring
    lse: object  # [stages, block_q] f32 lse2 rows (softmax only)
    delta: object  # [stages, block_q] f32 delta rows (softmax only)
    q_pos: object  # [stages, block_q] f32 query position (or ALiBi) rows
    q_time: object  # [stages, block_q] f32 query times


class _DkvBarriers(NamedTuple):
    kv_ready: object  # ([wgs], [wgs]): the warpgroup's K, V tiles landed
    k_meta_ready: object  # ([wgs], [wgs]): its key position, time rows landed
    q_ready: object  # [stages]: the slot's query tile landed
    do_ready: object  # [stages]: the slot's dout tile landed
    stat_ready: object  # ([stages], [stages]): the slot's lse2, delta rows landed
    q_meta_ready: object  # ([stages], [stages]): the slot's query position, time rows landed
    consumed: object  # [stages], wgs arrivals: every compute warpgroup is done with the slot


def _dkv_scratch(static, dims: _Dims) -> tuple[_DkvSmem, _DkvBarriers]:
    wgs, stages, block_q, block_kv = dims.wgs, dims.stages, dims.block_q, dims.block_kv
    smem = _DkvSmem(
        k=_tiles_smem(wgs, block_kv, dims.head_dim, dims.dtype),
        v=_tiles_smem(wgs, block_kv, dims.value_dim, dims.dtype),
        k_pos=_rows_smem(wgs, block_kv, static.has_alibi),
        k_time=_rows_smem(wgs, block_kv, static.has_time),
        q=_tiles_smem(stages, block_q, dims.head_dim, dims.dtype),
        do=_tiles_smem(stages, block_q, dims.value_dim, dims.dtype),
        lse=_rows_smem(stages, block_q),
        delta=_rows_smem(stages, block_q),
        q_pos=_rows_smem(stages, block_q, static.has_alibi),
        q_time=_rows_smem(stages, block_q, static.has_time))
    barriers = _DkvBarriers(
        kv_ready=(plgpu.Barrier(num_barriers=wgs),) * 2,
        k_meta_ready=(plgpu.Barrier(num_barriers=wgs),) * 2,
        q_ready=plgpu.Barrier(num_barriers=stages),
        do_ready=plgpu.Barrier(num_barriers=stages),
        stat_ready=(plgpu.Barrier(num_barriers=stages),) * 2,
        q_meta_ready=(plgpu.Barrier(num_barriers=stages),) * 2,
        consumed=plgpu.Barrier(num_arrivals=wgs, num_barriers=stages))
    return smem, barriers


def _dkv(static, q, k, v, meta, dout, lse2, delta):
    dims = _Dims.of(static.tiling, q, v, backward=True)
    out_type = (jax.ShapeDtypeStruct(k.shape, dims.dtype),
                jax.ShapeDtypeStruct(v.shape, dims.dtype))
    return _launch(static, dims, _dkv_cta, _DkvGmem, out_type, _dkv_scratch(static, dims),
                   "kv_seq")(*_meta_args(meta), q, k, v, dout, lse2, delta)


class _QuerySteps(NamedTuple):
    """The query tiles a key CTA visits (`_gpu_tiles.q_blocks`): tiles first..end-1, in `count`
    steps."""
    first: jax.Array
    end: jax.Array
    count: jax.Array

    def query_start(self, step, block_q: int):
        return (self.first + step) * block_q


def _plan_key_cta(cta: _Cta) -> tuple[jax.Array, _QuerySteps]:
    """(first key row, query steps) of a dk/dv CTA."""
    dims, sample = cta.dims, cta.sample
    cta_keys = dims.wgs * dims.block_kv
    cta_start = lax.axis_index("kv_seq") * cta_keys
    first, end = tiles.q_blocks(cta_start, cta_keys, dims.block_q, sample.length,
                                sample.num_candidates)
    return cta_start, _QuerySteps(first, end, end - first)


def _dkv_cta(cta: _Cta) -> None:
    """One CTA: `wgs` key tiles, each gathering dk and dv over the query tiles that see them,
    streamed by the memory warpgroup through the ring."""
    cta_start, steps = _plan_key_cta(cta)

    def body(path: _Path):
        cta.split_roles(lambda: _dkv_compute(cta, path, cta_start, steps),
                        lambda: _stream_query_tiles(cta, path.queries, steps))
    cta.run(body)


def _stream_query_tiles(cta: _Cta, queries: _TokenMeta, steps: _QuerySteps) -> None:
    """The memory warpgroup of the dk/dv kernel: per query step, the Q tile, the queries'
    metadata, the dO tile and (softmax) the rows' lse2 and delta into the step's ring slot."""
    dims, sample, smem, barriers, gmem = cta.dims, cta.sample, cta.smem, cta.barriers, cta.gmem

    def issue(step, slot):
        q_start = steps.query_start(step, dims.block_q)
        rows = (sample.batch, pl.ds(q_start, dims.block_q), sample.head)
        stat = (sample.batch, sample.head, pl.ds(q_start, dims.block_q))
        plgpu.copy_gmem_to_smem(gmem.q.at[rows], smem.q.at[slot], barriers.q_ready.at[slot])
        queries.copy(q_start, dims.block_q, slot)
        plgpu.copy_gmem_to_smem(gmem.do.at[rows], smem.do.at[slot], barriers.do_ready.at[slot])
        if cta.static.kind == "softmax":  # SiLU's gradients read neither
            lse_ready, delta_ready = barriers.stat_ready
            plgpu.copy_gmem_to_smem(gmem.lse.at[stat], smem.lse.at[slot], lse_ready.at[slot])
            plgpu.copy_gmem_to_smem(gmem.delta.at[stat], smem.delta.at[slot], delta_ready.at[slot])
    _producer(steps.count, dims.stages, barriers.consumed, issue)


def _dkv_compute(cta: _Cta, path: _Path, cta_start, steps: _QuerySteps) -> None:
    """A compute warpgroup: load its K and V tiles, gather dk and dv over the query steps (the
    interior ones, whose pairs with these keys are all valid, without a mask), scale and store."""
    dims, sample, smem, gmem, wg = cta.dims, cta.sample, cta.smem, cta.gmem, cta.wg
    _claim_compute_registers(dims.wgs)
    k_smem, v_smem = smem.k.at[wg], smem.v.at[wg]
    k_start = cta_start + wg * dims.block_kv
    rows = (sample.batch, pl.ds(k_start, dims.block_kv), sample.head)
    k_ready, v_ready = cta.barriers.kv_ready
    _load_resident(((gmem.k.at[rows], k_smem, k_ready), (gmem.v.at[rows], v_smem, v_ready)),
                   path.keys, k_start, dims.block_kv, wg)
    # resident for every step: cleaned once here, where the ring tiles are cleaned per masked step
    _zero_rows_past(k_smem, k_start, sample.length)
    _zero_rows_past(v_smem, k_start, sample.length)
    # Tiles here are transposed, [keys, queries]: keys are the WGMMA M dimension.
    tile = _ResidentTile(k_smem, k_start, path.keys.read(wg, _ROW))

    a, b = tiles.interior_q_blocks(k_start, dims.block_kv, dims.block_q, sample.length,
                                   sample.num_candidates, steps.first, steps.end)
    carry = (_acc((dims.block_kv, dims.head_dim)), _acc((dims.block_kv, dims.value_dim)))
    first = steps.first
    step = functools.partial(_dkv_step, cta, path, tile, v_smem, steps)
    dk, dv = _run_steps(step, ((0, a - first, True), (a - first, b - first, False),
                               (b - first, steps.count, True)), carry)
    _dkv_epilogue(cta, rows, dk, dv)


def _dkv_step(cta: _Cta, path: _Path, tile: _ResidentTile, v_smem, steps: _QuerySteps, step,
              carry, masked: bool):
    """Query step `step`, in transposed tiles ([keys, queries]): P^T of the key tile against the
    slot's query tile, dV += P^T dO and dP^T = V dO^T, the logits' gradient dS^T, dK += dS^T Q;
    then the slot is released to the memory warpgroup."""
    dk, dv = carry
    dims, sample, smem, barriers = cta.dims, cta.sample, cta.smem, cta.barriers
    slot = _slot(step, dims.stages)
    q_start = steps.query_start(step, dims.block_q)
    q_tile = _await_tile(smem.q, barriers.q_ready, slot, q_start, sample.length, clean=masked)
    qk_t = _matmul(tile.smem, _transposed(q_tile), (dims.block_kv, dims.block_q))
    q_meta = path.queries.read(slot, _COL)
    logits, mask = sample.scores(qk_t, q_start, tile.start, q_meta, tile.meta, cta.static.kind,
                                 masked, transposed=True, ordered=path.ordered)
    p_t, slope_t = _transposed_weights(cta, logits, mask, slot)
    do_tile = _await_tile(smem.do, barriers.do_ready, slot, q_start, sample.length, clean=masked)
    # dV += P^T dO and dP^T = V dO^T both read the dO tile: issued back to back, one wait for both
    # (FA3's order), instead of dP^T, wait, ..., dV, wait
    dv, dp_t = _dv_and_dp(p_t.astype(dims.dtype), v_smem, do_tile, dv)
    dlogits_t = _transposed_dlogits(cta, p_t, slope_t, mask, dp_t, slot)
    dk = _matmul(dlogits_t.astype(dims.dtype), q_tile, None, accumulate=dk)
    plgpu.barrier_arrive(barriers.consumed.at[slot])
    return dk, dv


def _transposed_weights(cta: _Cta, logits, mask, slot):
    """(P^T, SiLU's slope or None): softmax against the slot's lse2 rows (waited for only now),
    or SiLU's weights and the slope its gradient needs."""
    if cta.static.kind == "softmax":
        plgpu.barrier_wait(cta.barriers.stat_ready[0].at[slot])
        lse2 = _load(cta.smem.lse.at[slot], _COL)
        return tiles.softmax_probs(logits, mask, lse2, query_axis=1), None
    return tiles.silu_parts(logits, mask)


def _transposed_dlogits(cta: _Cta, p_t, slope_t, mask, dp_t, slot):
    """dS^T from dP^T: softmax with the slot's delta rows (waited for only now), or SiLU's."""
    if cta.static.kind == "softmax":
        plgpu.barrier_wait(cta.barriers.stat_ready[1].at[slot])
        delta = _load(cta.smem.delta.at[slot], _COL)
        return tiles.softmax_dlogits(p_t, dp_t, delta, query_axis=1)
    return tiles.silu_dlogits(slope_t, mask, dp_t)


def _dkv_epilogue(cta: _Cta, rows, dk, dv) -> None:
    """Scale dk (SiLU: dk and dv also by 1 / length) and store both, staged in the K and V
    buffers (no longer read). Rows of keys past the length need no zeroing, unlike dq's: such
    keys are never in an unmasked step (`interior_q_blocks`), so all their pairs were masked."""
    dk = dk * cta.static.scale
    if cta.static.kind == "silu":
        dk, dv = dk * cta.sample.inverse_length(), dv * cta.sample.inverse_length()
    smem, gmem = cta.smem, cta.gmem
    _store(((dk, smem.k.at[cta.wg], gmem.dk.at[rows]), (dv, smem.v.at[cta.wg], gmem.dv.at[rows])))
