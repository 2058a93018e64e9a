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
"""

from __future__ import annotations

import dataclasses
import functools
import inspect

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


def _kv_issue(sample, kv_refs, kv_smem, kv_ready, k_meta, block_kv, n_first, second_start):
    """`issue(step, slot)` for `_producer` in the kernels that stream key tiles (forward, dq): the
    K and V tiles of kv step `step` and the keys' position / time rows into ring slot `slot`."""
    (k_ref, v_ref), (k_smem, v_smem), (k_ready, v_ready) = kv_refs, kv_smem, kv_ready
    k_sources, kpos_smem, ktime_smem, kmeta_ready = k_meta

    def issue(step, slot):
        k_start = tiles.kv_block(step, n_first, second_start) * block_kv
        rows = (sample.batch, pl.ds(k_start, block_kv), sample.head)
        plgpu.copy_gmem_to_smem(k_ref.at[rows], k_smem.at[slot], k_ready.at[slot])
        _copy_meta(k_sources, k_start, block_kv, kpos_smem, ktime_smem, kmeta_ready, slot)
        plgpu.copy_gmem_to_smem(v_ref.at[rows], v_smem.at[slot], v_ready.at[slot])
    return issue


def _producer(n_steps, stages: int, consumed, issue):
    """Memory warpgroup: fill the ring, then refill each slot once all consumers released it."""
    plgpu.set_max_registers(40, action="decrease")
    for slot in range(stages):
        @pl.when(slot < n_steps)
        def _prologue():
            issue(jnp.int32(slot), slot)

    @pl.loop(0, jnp.maximum(n_steps - stages, 0))
    def _refill(step):
        slot = lax.rem(step, jnp.int32(stages))
        plgpu.barrier_wait(consumed.at[slot])
        issue(step + stages, slot)


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


def _meta_vectors(sources, pos_smem, time_smem, index, layout):
    """(position, time) vectors of slot `index` in `layout` (None where `sources` has none)."""
    pos_ref, time_ref = sources
    pos = _load(pos_smem.at[index], layout) if pos_ref is not None else None
    time = _load(time_smem.at[index], layout) if time_ref is not None else None
    return pos, time


def _copy_meta(sources, start, size, pos_smem, time_smem, barriers, slot):
    for row, smem, barrier in zip(sources, (pos_smem, time_smem), barriers):
        if row is not None:
            plgpu.copy_gmem_to_smem(row.at[pl.ds(start, size)], smem.at[slot], barrier.at[slot])


def _wait_meta(sources, barriers, slot):
    for ref, barrier in zip(sources, barriers):
        if ref is not None:
            plgpu.barrier_wait(barrier.at[slot])


def _num_meta(static):
    return 4 + static.has_alibi + static.has_time + static.ordered_path * (2 + static.has_alibi)


# ---------------------------------------------------------------- forward

def forward(static, q, k, v, meta):
    """(out [B, S, H, Dv], lse2 [B, H, S]) on padded 16-bit inputs; see `_gpu_blocked.forward`."""
    _ensure_log1p_lowering()
    tiling: HopperTiling = static.tiling
    batch, seq_len, heads, head_dim = q.shape
    value_dim = v.shape[-1]
    dtype = q.dtype
    block_q, block_kv, stages, wgs = tiling.block_q, tiling.block_kv, tiling.stages, tiling.compute_wgs
    cta_rows = wgs * block_q
    has_alibi, has_time = static.has_alibi, static.has_time
    split = _num_meta(static)
    share_qo = value_dim == head_dim

    def kernel(*refs):
        meta_refs = refs[:split]
        q_ref, k_ref, v_ref, out_ref, lse_ref = refs[split:split + 5]
        (q_smem2, o_smem2, k_smem, v_smem, qpos_smem, qtime_smem, kpos_smem, ktime_smem,
         lse_smem2), barriers = refs[split + 5:]
        (q_ready, qmeta_ready, k_ready, v_ready, kmeta_ready, consumed, schedule) = barriers
        sample = _Sample(meta_refs, static)
        wg = lax.axis_index("wg")
        # the last query tiles see the most keys: launch them first (fewer stragglers at the end)
        cta_start = (seq_len // cta_rows - 1 - lax.axis_index("q_seq")) * cta_rows
        n_first, second_start, n_steps = tiles.kv_steps(
            cta_start, cta_rows, block_kv, sample.length, sample.num_candidates)

        def schedule_sync():
            if wgs == 2:
                plgpu.barrier_arrive(schedule)
                plgpu.barrier_wait(schedule)

        def body(ordered: bool):  # the tile math picked by the sample's flag, at run time
            q_sources = sample.sources(queries=True, ordered=ordered)
            k_sources = sample.sources(queries=False, ordered=ordered)
            @pl.when(wg < wgs)
            def _compute():
                plgpu.set_max_registers(232 if wgs == 2 else 240, action="increase")
                q_smem, lse_smem = q_smem2.at[wg], lse_smem2.at[wg]
                o_smem = q_smem if share_qo else o_smem2.at[wg]
                q_start = cta_start + wg * block_q
                plgpu.copy_gmem_to_smem(q_ref.at[sample.batch, pl.ds(q_start, block_q), sample.head],
                                        q_smem, q_ready.at[wg])
                _copy_meta(q_sources, q_start, block_q, qpos_smem, qtime_smem,
                           qmeta_ready, wg)
                plgpu.barrier_wait(q_ready.at[wg])
                _wait_meta(q_sources, qmeta_ready, wg)
                q_meta = _meta_vectors(q_sources, qpos_smem, qtime_smem, wg, _ROW)

                def step_fn(step, carry, masked):
                    acc, m, l = carry
                    slot = lax.rem(step, jnp.int32(stages))
                    k_start = tiles.kv_block(step, n_first, second_start) * block_kv
                    plgpu.barrier_wait(k_ready.at[slot])

                    def scores(acc_ref):
                        plgpu.wgmma(acc_ref, q_smem, _transposed(k_smem.at[slot]))
                        schedule_sync()  # let the other warpgroup's softmax run under this WGMMA
                        return acc_ref[...]
                    qk = pl.run_scoped(scores, plgpu.ACC((block_q, block_kv), jnp.float32))
                    _wait_meta(k_sources, kmeta_ready, slot)
                    k_meta = _meta_vectors(k_sources, kpos_smem, ktime_smem, slot, _COL)
                    logits, mask = sample.scores(qk, q_start, k_start, q_meta, k_meta, static.kind,
                                                 masked, ordered=ordered)
                    if static.kind == "softmax":
                        p, correction, m, l = tiles.softmax_update(logits, mask, m, l)
                        acc = acc * lax.broadcast_in_dim(correction, acc.shape, (0,))
                    else:
                        p = tiles.silu_weights(logits, mask)
                    if wgs == 2:
                        plgpu.barrier_arrive(schedule)
                    plgpu.barrier_wait(v_ready.at[slot])
                    if masked:
                        _zero_rows_past(v_smem.at[slot], k_start, sample.length)
                    if wgs == 2:
                        plgpu.barrier_wait(schedule)
                    acc = _matmul(p.astype(dtype), v_smem.at[slot], None, accumulate=acc)
                    plgpu.barrier_arrive(consumed.at[slot])
                    return acc, m, l

                init = (_acc((block_q, value_dim)),
                        plgpu.layout_cast(jnp.full((block_q,), tiles.M_INIT, jnp.float32), _ROW),
                        plgpu.layout_cast(jnp.zeros((block_q,), jnp.float32), _ROW))
                # interior key tiles (every pair valid) first, without a mask; then the rest
                n_interior = tiles.interior_kv_steps(q_start, block_kv, sample.length,
                                                     sample.num_candidates, n_first)
                pl.when(wg == 1)(schedule_sync)
                carry = lax.fori_loop(0, n_interior, functools.partial(step_fn, masked=False), init)
                acc, m, l = lax.fori_loop(n_interior, n_steps, functools.partial(step_fn, masked=True),
                                          carry)
                pl.when(wg == 0)(schedule_sync)
                row_valid = sample.row_valid(q_start, block_q)
                if static.kind == "softmax":
                    out, lse2 = tiles.softmax_finish(acc, m, l, row_valid)
                else:
                    out = tiles.zero_rows(acc * sample.inverse_length(), row_valid)
                    lse2 = plgpu.layout_cast(jnp.zeros((block_q,), jnp.float32), _ROW)
                o_smem[...] = out.astype(dtype)
                lse_smem[...] = lse2
                plgpu.commit_smem()
                plgpu.copy_smem_to_gmem(o_smem, out_ref.at[sample.batch, pl.ds(q_start, block_q),
                                                            sample.head])
                plgpu.copy_smem_to_gmem(lse_smem, lse_ref.at[sample.batch, sample.head,
                                                             pl.ds(q_start, block_q)])
                plgpu.wait_smem_to_gmem(0)

            @pl.when(wg == wgs)
            def _memory():
                _producer(n_steps, stages, consumed, _kv_issue(
                    sample, (k_ref, v_ref), (k_smem, v_smem), (k_ready, v_ready),
                    (k_sources, kpos_smem, ktime_smem, kmeta_ready), block_kv, n_first, second_start))

        sample.run(body)

    smem = plgpu.SMEM
    scratch = (
        (smem((wgs, block_q, head_dim), dtype, transforms=_SWIZZLE),
         None if share_qo else smem((wgs, block_q, value_dim), dtype, transforms=_SWIZZLE),
         smem((stages, block_kv, head_dim), dtype, transforms=_SWIZZLE),
         smem((stages, block_kv, value_dim), dtype, transforms=_SWIZZLE),
         smem((wgs, block_q), jnp.float32) if has_alibi else None,
         smem((wgs, block_q), jnp.float32) if has_time else None,
         smem((stages, block_kv), jnp.float32) if has_alibi else None,
         smem((stages, block_kv), jnp.float32) if has_time else None,
         smem((wgs, block_q), jnp.float32)),
        (plgpu.Barrier(num_barriers=wgs),
         (plgpu.Barrier(num_barriers=wgs),) * 2,
         plgpu.Barrier(num_barriers=stages),
         plgpu.Barrier(num_barriers=stages),
         (plgpu.Barrier(num_barriers=stages),) * 2,
         plgpu.Barrier(num_arrivals=wgs, num_barriers=stages),
         plgpu.Barrier(num_arrivals=wgs)),
    )
    out_type = (jax.ShapeDtypeStruct((batch, seq_len, heads, value_dim), dtype),
                jax.ShapeDtypeStruct((batch, heads, seq_len), jnp.float32))
    return plgpu.kernel(
        kernel, out_type=out_type, scratch_types=scratch,
        grid=(heads, seq_len // cta_rows, batch), grid_names=("heads", "q_seq", "batch"),
        num_threads=wgs + 1, thread_name="wg",
        compiler_params=_compiler_params(tiling),
    )(*_meta_args(meta), q, k, v)


def _meta_args(meta):
    """The metadata arrays in the kernels' order, absent terms (None) left out."""
    lengths, candidates, positions, *rest = meta
    # TMA'd next to the f32 times; exact below 2^24 (positions come shifted: the sample's span)
    positions = positions.astype(jnp.float32)
    return [x for x in (lengths, candidates, positions, *rest) if x is not None]


# ---------------------------------------------------------------- backward

def _dq(static, q, k, v, meta, dout, lse2, delta):
    tiling: HopperTiling = static.tiling
    batch, seq_len, heads, head_dim = q.shape
    value_dim = v.shape[-1]
    dtype = q.dtype
    block_q, block_kv, stages, wgs = (tiling.block_q_bwd, tiling.block_kv_bwd, tiling.stages,
                                      tiling.compute_wgs)
    cta_rows = wgs * block_q
    has_alibi, has_time = static.has_alibi, static.has_time
    split = _num_meta(static)

    def kernel(*refs):
        meta_refs = refs[:split]
        q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref = refs[split:split + 7]
        (q_smem2, do_smem2, lse_smem2, delta_smem2, qpos_smem, qtime_smem, k_smem, v_smem,
         kpos_smem, ktime_smem), barriers = refs[split + 7:]
        (q_ready, qmeta_ready, k_ready, v_ready, kmeta_ready, consumed) = barriers
        sample = _Sample(meta_refs, static)
        wg = lax.axis_index("wg")
        # the last query tiles see the most keys: launch them first (fewer stragglers at the end)
        cta_start = (seq_len // cta_rows - 1 - lax.axis_index("q_seq")) * cta_rows
        n_first, second_start, n_steps = tiles.kv_steps(
            cta_start, cta_rows, block_kv, sample.length, sample.num_candidates)

        def body(ordered: bool):  # the tile math picked by the sample's flag, at run time
            q_sources = sample.sources(queries=True, ordered=ordered)
            k_sources = sample.sources(queries=False, ordered=ordered)
            @pl.when(wg < wgs)
            def _compute():
                plgpu.set_max_registers(232 if wgs == 2 else 240, action="increase")
                q_smem, do_smem = q_smem2.at[wg], do_smem2.at[wg]
                q_start = cta_start + wg * block_q
                rows = (sample.batch, pl.ds(q_start, block_q), sample.head)
                stat = (sample.batch, sample.head, pl.ds(q_start, block_q))
                plgpu.copy_gmem_to_smem(q_ref.at[rows], q_smem, q_ready[0].at[wg])
                plgpu.copy_gmem_to_smem(do_ref.at[rows], do_smem, q_ready[1].at[wg])
                plgpu.copy_gmem_to_smem(lse_ref.at[stat], lse_smem2.at[wg], q_ready[2].at[wg])
                plgpu.copy_gmem_to_smem(delta_ref.at[stat], delta_smem2.at[wg], q_ready[3].at[wg])
                _copy_meta(q_sources, q_start, block_q, qpos_smem, qtime_smem,
                           qmeta_ready, wg)
                for barrier in q_ready:
                    plgpu.barrier_wait(barrier.at[wg])
                _wait_meta(q_sources, qmeta_ready, wg)
                q_meta = _meta_vectors(q_sources, qpos_smem, qtime_smem, wg, _ROW)
                lse2 = _load(lse_smem2.at[wg], _ROW)
                delta = _load(delta_smem2.at[wg], _ROW)

                def step_fn(step, dq, masked):
                    slot = lax.rem(step, jnp.int32(stages))
                    k_start = tiles.kv_block(step, n_first, second_start) * block_kv
                    plgpu.barrier_wait(k_ready.at[slot])
                    if masked:
                        _zero_rows_past(k_smem.at[slot], k_start, sample.length)
                    qk = _matmul(q_smem, _transposed(k_smem.at[slot]), (block_q, block_kv))
                    _wait_meta(k_sources, kmeta_ready, slot)
                    k_meta = _meta_vectors(k_sources, kpos_smem, ktime_smem, slot, _COL)
                    logits, mask = sample.scores(qk, q_start, k_start, q_meta, k_meta, static.kind,
                                                 masked, ordered=ordered)
                    plgpu.barrier_wait(v_ready.at[slot])
                    if masked:
                        _zero_rows_past(v_smem.at[slot], k_start, sample.length)
                    dp = _matmul(do_smem, _transposed(v_smem.at[slot]), (block_q, block_kv))
                    if static.kind == "softmax":
                        _, dlogits = tiles.softmax_grads(logits, mask, lse2, delta, dp)
                    else:
                        _, dlogits = tiles.silu_grads(logits, mask, dp)
                    dq = _matmul(dlogits.astype(dtype), k_smem.at[slot], None, accumulate=dq)
                    plgpu.barrier_arrive(consumed.at[slot])
                    return dq

                n_interior = tiles.interior_kv_steps(q_start, block_kv, sample.length,
                                                     sample.num_candidates, n_first)
                dq = lax.fori_loop(0, n_interior, functools.partial(step_fn, masked=False),
                                   _acc((block_q, head_dim)))
                dq = lax.fori_loop(n_interior, n_steps, functools.partial(step_fn, masked=True), dq)
                # rows past the length ran through unmasked interior tiles: drop what they gathered
                dq = tiles.zero_rows(dq, sample.row_valid(q_start, block_q)) * static.scale
                if static.kind == "silu":
                    dq = dq * sample.inverse_length()
                q_smem[...] = dq.astype(dtype)
                plgpu.commit_smem()
                plgpu.copy_smem_to_gmem(q_smem, dq_ref.at[rows])
                plgpu.wait_smem_to_gmem(0)

            @pl.when(wg == wgs)
            def _memory():
                _producer(n_steps, stages, consumed, _kv_issue(
                    sample, (k_ref, v_ref), (k_smem, v_smem), (k_ready, v_ready),
                    (k_sources, kpos_smem, ktime_smem, kmeta_ready), block_kv, n_first, second_start))

        sample.run(body)

    smem = plgpu.SMEM
    scratch = (
        (smem((wgs, block_q, head_dim), dtype, transforms=_SWIZZLE),
         smem((wgs, block_q, value_dim), dtype, transforms=_SWIZZLE),
         smem((wgs, block_q), jnp.float32), smem((wgs, block_q), jnp.float32),
         smem((wgs, block_q), jnp.float32) if has_alibi else None,
         smem((wgs, block_q), jnp.float32) if has_time else None,
         smem((stages, block_kv, head_dim), dtype, transforms=_SWIZZLE),
         smem((stages, block_kv, value_dim), dtype, transforms=_SWIZZLE),
         smem((stages, block_kv), jnp.float32) if has_alibi else None,
         smem((stages, block_kv), jnp.float32) if has_time else None),
        ((plgpu.Barrier(num_barriers=wgs),) * 4,
         (plgpu.Barrier(num_barriers=wgs),) * 2,
         plgpu.Barrier(num_barriers=stages),
         plgpu.Barrier(num_barriers=stages),
         (plgpu.Barrier(num_barriers=stages),) * 2,
         plgpu.Barrier(num_arrivals=wgs, num_barriers=stages)),
    )
    return plgpu.kernel(
        kernel, out_type=jax.ShapeDtypeStruct(q.shape, dtype), scratch_types=scratch,
        grid=(heads, seq_len // cta_rows, batch), grid_names=("heads", "q_seq", "batch"),
        num_threads=wgs + 1, thread_name="wg",
        compiler_params=_compiler_params(tiling),
    )(*_meta_args(meta), q, k, v, dout, lse2, delta)


def _dkv(static, q, k, v, meta, dout, lse2, delta):
    tiling: HopperTiling = static.tiling
    batch, seq_len, heads, head_dim = q.shape
    value_dim = v.shape[-1]
    dtype = q.dtype
    block_q, block_kv, stages, wgs = (tiling.block_q_bwd, tiling.block_kv_bwd, tiling.stages,
                                      tiling.compute_wgs)
    cta_keys = wgs * block_kv
    has_alibi, has_time = static.has_alibi, static.has_time
    split = _num_meta(static)

    def kernel(*refs):
        meta_refs = refs[:split]
        q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref = refs[split:split + 8]
        (k_smem2, v_smem2, kpos_smem, ktime_smem, q_smem, do_smem, lse_smem, delta_smem,
         qpos_smem, qtime_smem), barriers = refs[split + 8:]
        (k_ready, kmeta_ready, q_ready, do_ready, stat_ready, qmeta_ready, consumed) = barriers
        sample = _Sample(meta_refs, static)
        wg = lax.axis_index("wg")
        cta_start = lax.axis_index("kv_seq") * cta_keys
        first, end = tiles.q_blocks(cta_start, cta_keys, block_q, sample.length,
                                    sample.num_candidates)
        n_steps = end - first

        def body(ordered: bool):  # the tile math picked by the sample's flag, at run time
            q_sources = sample.sources(queries=True, ordered=ordered)
            k_sources = sample.sources(queries=False, ordered=ordered)
            @pl.when(wg < wgs)
            def _compute():
                plgpu.set_max_registers(232 if wgs == 2 else 240, action="increase")
                k_smem, v_smem = k_smem2.at[wg], v_smem2.at[wg]
                k_start = cta_start + wg * block_kv
                rows = (sample.batch, pl.ds(k_start, block_kv), sample.head)
                plgpu.copy_gmem_to_smem(k_ref.at[rows], k_smem, k_ready[0].at[wg])
                plgpu.copy_gmem_to_smem(v_ref.at[rows], v_smem, k_ready[1].at[wg])
                _copy_meta(k_sources, k_start, block_kv, kpos_smem, ktime_smem,
                           kmeta_ready, wg)
                for barrier in k_ready:
                    plgpu.barrier_wait(barrier.at[wg])
                _zero_rows_past(k_smem, k_start, sample.length)
                _zero_rows_past(v_smem, k_start, sample.length)
                _wait_meta(k_sources, kmeta_ready, wg)
                # Tiles here are transposed, [keys, queries]: keys are the WGMMA M dimension.
                k_meta = _meta_vectors(k_sources, kpos_smem, ktime_smem, wg, _ROW)

                def step_fn(step, carry, masked):
                    dk, dv = carry
                    slot = lax.rem(step, jnp.int32(stages))
                    q_start = (first + step) * block_q
                    plgpu.barrier_wait(q_ready.at[slot])
                    if masked:
                        _zero_rows_past(q_smem.at[slot], q_start, sample.length)
                    qk_t = _matmul(k_smem, _transposed(q_smem.at[slot]), (block_kv, block_q))
                    _wait_meta(q_sources, qmeta_ready, slot)
                    q_meta = _meta_vectors(q_sources, qpos_smem, qtime_smem, slot, _COL)
                    logits, mask = sample.scores(qk_t, q_start, k_start, q_meta, k_meta, static.kind,
                                                 masked, transposed=True, ordered=ordered)
                    if static.kind == "softmax":
                        plgpu.barrier_wait(stat_ready[0].at[slot])
                        lse2 = _load(lse_smem.at[slot], _COL)
                        p_t = tiles.softmax_probs(logits, mask, lse2, query_axis=1)
                    else:
                        p_t, slope_t = tiles.silu_parts(logits, mask)
                    plgpu.barrier_wait(do_ready.at[slot])
                    if masked:
                        _zero_rows_past(do_smem.at[slot], q_start, sample.length)
                    # dV += P^T dO and dP^T = V dO^T both read the dO tile: issued back to back,
                    # one wait for both (FA3's order), instead of dP^T, wait, ..., dV, wait
                    dv, dp_t = _dv_and_dp(p_t.astype(dtype), v_smem, do_smem.at[slot], dv)
                    if static.kind == "softmax":
                        plgpu.barrier_wait(stat_ready[1].at[slot])
                        delta = _load(delta_smem.at[slot], _COL)
                        dlogits_t = tiles.softmax_dlogits(p_t, dp_t, delta, query_axis=1)
                    else:
                        dlogits_t = tiles.silu_dlogits(slope_t, mask, dp_t)
                    dk = _matmul(dlogits_t.astype(dtype), q_smem.at[slot], None, accumulate=dk)
                    plgpu.barrier_arrive(consumed.at[slot])
                    return dk, dv

                # query tiles whose pairs with these keys are all valid run without a mask
                a, b = tiles.interior_q_blocks(k_start, block_kv, block_q, sample.length,
                                               sample.num_candidates, first, end)
                carry = (_acc((block_kv, head_dim)), _acc((block_kv, value_dim)))
                for lo, hi, masked in ((0, a - first, True), (a - first, b - first, False),
                                       (b - first, n_steps, True)):
                    carry = lax.fori_loop(lo, hi, functools.partial(step_fn, masked=masked), carry)
                dk, dv = carry
                dk = dk * static.scale
                if static.kind == "silu":
                    dk, dv = dk * sample.inverse_length(), dv * sample.inverse_length()
                k_smem[...] = dk.astype(dtype)
                v_smem[...] = dv.astype(dtype)
                plgpu.commit_smem()
                plgpu.copy_smem_to_gmem(k_smem, dk_ref.at[rows])
                plgpu.copy_smem_to_gmem(v_smem, dv_ref.at[rows])
                plgpu.wait_smem_to_gmem(0)

            @pl.when(wg == wgs)
            def _memory():
                def issue(step, slot):
                    q_start = (first + step) * block_q
                    rows = (sample.batch, pl.ds(q_start, block_q), sample.head)
                    stat = (sample.batch, sample.head, pl.ds(q_start, block_q))
                    plgpu.copy_gmem_to_smem(q_ref.at[rows], q_smem.at[slot], q_ready.at[slot])
                    _copy_meta(q_sources, q_start, block_q, qpos_smem, qtime_smem,
                               qmeta_ready, slot)
                    plgpu.copy_gmem_to_smem(do_ref.at[rows], do_smem.at[slot], do_ready.at[slot])
                    if static.kind == "softmax":
                        plgpu.copy_gmem_to_smem(lse_ref.at[stat], lse_smem.at[slot],
                                                stat_ready[0].at[slot])
                        plgpu.copy_gmem_to_smem(delta_ref.at[stat], delta_smem.at[slot],
                                                stat_ready[1].at[slot])
                _producer(n_steps, stages, consumed, issue)

        sample.run(body)

    smem = plgpu.SMEM
    scratch = (
        (smem((wgs, block_kv, head_dim), dtype, transforms=_SWIZZLE),
         smem((wgs, block_kv, value_dim), dtype, transforms=_SWIZZLE),
         smem((wgs, block_kv), jnp.float32) if has_alibi else None,
         smem((wgs, block_kv), jnp.float32) if has_time else None,
         smem((stages, block_q, head_dim), dtype, transforms=_SWIZZLE),
         smem((stages, block_q, value_dim), dtype, transforms=_SWIZZLE),
         smem((stages, block_q), jnp.float32), smem((stages, block_q), jnp.float32),
         smem((stages, block_q), jnp.float32) if has_alibi else None,
         smem((stages, block_q), jnp.float32) if has_time else None),
        ((plgpu.Barrier(num_barriers=wgs),) * 2,
         (plgpu.Barrier(num_barriers=wgs),) * 2,
         plgpu.Barrier(num_barriers=stages),
         plgpu.Barrier(num_barriers=stages),
         (plgpu.Barrier(num_barriers=stages),) * 2,
         (plgpu.Barrier(num_barriers=stages),) * 2,
         plgpu.Barrier(num_arrivals=wgs, num_barriers=stages)),
    )
    return plgpu.kernel(
        kernel, out_type=(jax.ShapeDtypeStruct(k.shape, dtype), jax.ShapeDtypeStruct(v.shape, dtype)),
        scratch_types=scratch,
        grid=(heads, seq_len // cta_keys, batch), grid_names=("heads", "kv_seq", "batch"),
        num_threads=wgs + 1, thread_name="wg",
        compiler_params=_compiler_params(tiling),
    )(*_meta_args(meta), q, k, v, dout, lse2, delta)


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
