"""Attention backend `impl="pallas_mosaic_gpu"`: the Hopper fast path, Pallas lowered to Mosaic GPU.

On an H100/H200 (compute capability 9.x) `attention` runs `_gpu_hopper`: FlashAttention-3 style
kernels with a TMA-fed shared-memory ring per CTA, a producer (memory) warpgroup and two consumer
warpgroups ping-ponging WGMMA against softmax; forward, dq and dk/dv kernels alike, visiting only
the key (or query) blocks with a valid pair. 16-bit inputs only: f32 on the GPU raises
NotImplementedError (WGMMA would compute it as TF32; use `impl="pallas_triton"` for f32).

What `interpret=True` covers, and what it does not
--------------------------------------------------
Mosaic GPU kernels cannot run in the plain Pallas interpreter, and jax's experimental GPU
interpreter (`plgpu.InterpretGPUParams`, jax >= 0.11) cannot run this kernel either: with jax
0.11.2 it fails with "Cannot lower jaxpr with effects: {IOEffect, _WGMMAPipelineEffect}"
(`test_hopper_kernels_under_gpu_interpret_mode` is a strict xfail on that message). So
`interpret=True` runs the blocked `pallas_call` kernels of `_gpu_blocked` with the *same CTA
tiling* (query tiles of compute_wgs x block_q rows, key tiles of block_kv, the same block-skipping
schedule `_gpu_tiles.kv_steps` / `q_blocks`) and the *same tile arithmetic* (`_gpu_tiles`: mask,
ALiBi position/time bias, online softmax in base 2, SiLU and all gradients), in f32 or bf16.
CI therefore checks the math, the skipping and the padding of this backend.
Only a GPU run checks: the TMA copies, the barrier protocol between the memory and compute
warpgroups (ring-slot reuse, ping-pong schedule), WGMMA operand layouts and swizzles, register
and shared-memory budgets, and the `log(1 + x)` lowering added for Mosaic GPU (it has no log1p
rule). The test suite also lowers the Hopper kernels for CUDA on the CPU (Mosaic GPU's Python
lowering, layout inference included), which catches unsupported primitives and shape errors
without a GPU; `tests/kernels/test_pallas_gpu.py -m device` runs them for real.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from genrank_jax.kernels import _gpu_blocked as blocked
from genrank_jax.kernels._vjp import check_tile_sizes, make_op, padded_call, round_up

try:
    from genrank_jax.kernels import _gpu_hopper as hopper
except Exception as _error:  # noqa: BLE001 - a jax whose Mosaic GPU API moved: reported, never raised
    hopper, _IMPORT_ERROR = None, _error
else:
    _IMPORT_ERROR = None

WGMMA_ROWS = 64  # rows of one warpgroup's WGMMA tile


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """CTA tiling: `compute_wgs` warpgroups of `block_q` query rows, key tiles of `block_kv`.

    `stages` is the depth of the TMA ring; `block_q_bwd` / `block_kv_bwd` tile the dq (query
    rows per warpgroup, keys per step) and dk/dv (key rows per warpgroup, queries per step)
    kernels. The Hopper kernels need block_q == block_q_bwd == block_kv_bwd == 64 and block_kv a
    multiple of 64; interpret mode accepts any power of two >= 16 so short test sequences span
    several tiles. `lowering` picks Mosaic GPU's lowering semantics ("lane" or "warpgroup";
    None: the installed jax's default, lane on 0.10, warpgroup from 0.11).
    """
    block_q: int = 64
    block_kv: int = 128
    stages: int = 2
    compute_wgs: int = 2
    block_q_bwd: int = 64
    block_kv_bwd: int = 64
    lowering: str | None = None

    def __post_init__(self):
        check_tile_sizes(self, ("block_q", "block_kv", "block_q_bwd", "block_kv_bwd"))
        if not isinstance(self.stages, int) or self.stages < 2:
            raise ValueError(f"stages={self.stages!r} must be an int >= 2 (a TMA double buffer)")
        if self.compute_wgs not in (1, 2):
            raise ValueError(f"compute_wgs={self.compute_wgs!r} must be 1 or 2")
        if self.lowering not in (None, "lane", "warpgroup"):
            raise ValueError(f"lowering={self.lowering!r} must be None, 'lane' or 'warpgroup'")

    @classmethod
    def for_device(cls, head_dim: int, dtype, device=None) -> "BlockSizes":
        """Hopper: 2 x 64-row warpgroups and 128-key tiles; for D > 128 one compute warpgroup and
        64-key tiles, so that the dq kernel's resident q and dout plus the K/V ring fit in the
        227 KiB of shared memory (two warpgroups at D = 256 need 262 KiB).

        Elsewhere (interpret mode): 2 x 16-row tiles and 16-key tiles.
        """
        del dtype  # one choice for bf16 and f16; f32 does not run on the Hopper path
        device = device or jax.devices()[0]
        if device.platform != "gpu":
            return cls(block_q=16, block_kv=16, stages=2, compute_wgs=2,
                       block_q_bwd=16, block_kv_bwd=16)
        if head_dim > 128:
            return cls(block_kv=64, compute_wgs=1)
        return cls(block_kv=128)

    def hopper_problems(self) -> list[str]:
        problems = []
        for name in ("block_q", "block_q_bwd", "block_kv_bwd"):
            if getattr(self, name) != WGMMA_ROWS:
                problems.append(f"{name}={getattr(self, name)} must be {WGMMA_ROWS} on Hopper")
        if self.block_kv % WGMMA_ROWS:
            problems.append(f"block_kv={self.block_kv} must be a multiple of {WGMMA_ROWS} on Hopper")
        return problems

    def seq_multiple(self) -> int:
        return max(self.compute_wgs * self.block_q, self.block_kv,
                   self.compute_wgs * max(self.block_q_bwd, self.block_kv_bwd))


def unavailable_reason(interpret: bool) -> str | None:
    """None when this backend can run here, else why not."""
    if interpret:
        return None  # the blocked kernels run in the Pallas interpreter everywhere
    if _IMPORT_ERROR is not None:
        return f"jax {jax.__version__} lacks the Mosaic GPU API this backend uses ({_IMPORT_ERROR})"
    device = jax.devices()[0]
    if device.platform != "gpu":
        return (f"pallas_mosaic_gpu needs an NVIDIA Hopper GPU (the default device is "
                f"{device.platform}); pass interpret=True to check its math in the interpreter")
    try:
        capability = float(getattr(device, "compute_capability", ""))
    except ValueError:
        return f"pallas_mosaic_gpu needs CUDA; {device.device_kind} reports no compute capability"
    if not 9.0 <= capability < 10.0:
        return (f"pallas_mosaic_gpu needs a Hopper GPU (compute capability 9.x, WGMMA); "
                f"{device.device_kind} has {capability}")
    return None


def _interpret_tiling(sizes: BlockSizes) -> blocked.Tiling:
    """The blocked kernels' tiles that mirror the Hopper CTAs."""
    wgs = sizes.compute_wgs
    return blocked.Tiling(
        block_q=wgs * sizes.block_q, block_k=sizes.block_kv,
        block_q_dq=wgs * sizes.block_q_bwd, block_k_dq=sizes.block_kv_bwd,
        block_q_dkv=sizes.block_q_bwd, block_k_dkv=wgs * sizes.block_kv_bwd)


_interpret_op = make_op(blocked.forward, blocked.backward)
_hopper_op = None if hopper is None else make_op(hopper.forward, hopper.backward)


def attention(q, k, v, *, lengths, num_candidates, positions, timestamps, alibi_slopes,
              time_slopes, kind, scale, interpret, block_sizes=None):
    """[B, S, H, Dv]; arguments validated and defaulted by `genrank_jax.kernels.attention`."""
    if block_sizes is None:
        block_sizes = BlockSizes.for_device(q.shape[-1], q.dtype)
    if not isinstance(block_sizes, BlockSizes):
        raise TypeError(f"block_sizes must be a pallas_mosaic_gpu.BlockSizes, got {type(block_sizes)}")
    common = dict(kind=kind, scale=scale, has_alibi=alibi_slopes is not None,
                  has_time=time_slopes is not None, interpret=interpret)
    if interpret:
        op, static = _interpret_op, blocked.Static(tiling=_interpret_tiling(block_sizes), **common)
    else:
        if jnp.dtype(q.dtype).itemsize != 2:
            raise NotImplementedError(
                f"pallas_mosaic_gpu runs 16-bit inputs (WGMMA), got {q.dtype}; "
                "use impl='pallas_triton' for f32")
        problems = block_sizes.hopper_problems()
        if block_sizes.lowering is not None and block_sizes.lowering not in hopper.lowering_modes():
            problems.append(f"lowering={block_sizes.lowering!r}: jax {jax.__version__} offers "
                            f"{hopper.lowering_modes()}")
        if problems:
            raise ValueError("; ".join(problems))
        tiling = hopper.HopperTiling(**dataclasses.asdict(block_sizes))
        op, static = _hopper_op, blocked.Static(tiling=tiling, **common)
    # 128-byte swizzled rows of 16-bit values: head dims padded to multiples of 64, also when
    # interpreting, so both paths see the same shapes.
    return padded_call(
        op, static, q, k, v, lengths=lengths, num_candidates=num_candidates,
        positions=positions, timestamps=timestamps, alibi_slopes=alibi_slopes,
        time_slopes=time_slopes, seq_multiple=block_sizes.seq_multiple(),
        head_dim=round_up(q.shape[-1], 64), value_dim=round_up(v.shape[-1], 64))
