"""Attention backend `impl="pallas_triton"`: FlashAttention-2 kernels lowered through Triton.

Forward: one program per (sample, head, query tile) walks only the key blocks that hold a valid
pair (`_gpu_tiles.kv_steps`: history blocks up to the causal diagonal, then the diagonal blocks
of the candidate rows) with an online softmax (or the HSTU SiLU sum) and saves the base-2
log-sum-exp. Backward: a dq kernel over the same key blocks and a dk/dv kernel over the query
blocks that see each key tile (`_gpu_tiles.q_blocks`), FlashAttention-2 style, no atomics.
Mask and ALiBi position/time bias are computed per tile from iota, positions, timestamps, lengths
and num_candidates (`masking.valid_pairs`, `masking.relative_bias`); nothing of size S^2 exists.

Since jax 0.9 a plain GPU `pallas_call` lowers to Mosaic GPU; passing Triton compiler params
selects Triton (the `backend=` argument is gone). jax 0.11 deprecates the Triton backend (it warns
at lowering); `pallas_mosaic_gpu` is the Hopper fast path. `interpret=True` runs these very
kernels in the Pallas interpreter on any platform.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from genrank_jax.kernels import _gpu_blocked as blocked
from genrank_jax.kernels._vjp import check_tile_sizes, make_op, next_power_of_two, padded_call

try:  # jax >= 0.9: Triton is chosen by its compiler params
    from jax.experimental.pallas import triton as _pallas_triton
    _TritonParams = getattr(_pallas_triton, "CompilerParams", None) or _pallas_triton.TritonCompilerParams
except Exception as _error:  # noqa: BLE001 - a jax without Pallas Triton: reported, never raised
    _pallas_triton, _TritonParams, _IMPORT_ERROR = None, None, _error
else:
    _IMPORT_ERROR = None

MIN_COMPUTE_CAPABILITY = 8.0  # bf16 tensor-core dots in Triton need Ampere or newer


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes of the forward, dq and dk/dv kernels and Triton's warps / pipeline stages."""
    block_q: int = 64
    block_k: int = 64
    block_q_dq: int = 64
    block_k_dq: int = 32
    block_q_dkv: int = 32
    block_k_dkv: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        check_tile_sizes(self, ("block_q", "block_k", "block_q_dq", "block_k_dq", "block_q_dkv", "block_k_dkv"))
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"num_warps={self.num_warps!r} must be one of 1, 2, 4, 8, 16")
        if not isinstance(self.num_stages, int) or self.num_stages < 1:
            raise ValueError(f"num_stages={self.num_stages!r} must be a positive int")

    @classmethod
    def for_device(cls, head_dim: int, dtype, device=None) -> "BlockSizes":
        """Defaults for `device` (the default device when None).

        GPU: 128-row query tiles and 64-row key tiles forward (32 keys for D > 128 to stay
        within registers), 64 x 64 (32 x 32 for D > 128) backward, as jax's Triton attention
        does. Elsewhere (interpret mode) small 16/32 tiles so short test sequences still cross
        several tile boundaries.
        """
        device = device or jax.devices()[0]
        if device.platform != "gpu":
            return cls(block_q=32, block_k=16, block_q_dq=16, block_k_dq=32,
                       block_q_dkv=32, block_k_dkv=16)
        wide = head_dim > 128 or jnp.dtype(dtype).itemsize > 2
        return cls(
            block_q=64 if wide else 128, block_k=32 if wide else 64,
            block_q_dq=32 if wide else 64, block_k_dq=32 if wide else 64,
            block_q_dkv=32 if wide else 64, block_k_dkv=32 if wide else 64,
            num_warps=8 if head_dim > 64 else 4, num_stages=2 if wide else 3,
        )

    def tiling(self, seq_len: int) -> blocked.Tiling:
        # Short sequences: no tile larger than the sequence rounded to a power of two.
        cap = max(16, next_power_of_two(seq_len))
        return blocked.Tiling(*(min(b, cap) for b in (
            self.block_q, self.block_k, self.block_q_dq, self.block_k_dq,
            self.block_q_dkv, self.block_k_dkv)))


def unavailable_reason(interpret: bool) -> str | None:
    """None when this backend can run here, else why not."""
    if _IMPORT_ERROR is not None:
        return f"jax {jax.__version__} has no Pallas Triton backend ({_IMPORT_ERROR})"
    if interpret:
        return None
    device = jax.devices()[0]
    if device.platform != "gpu":
        return (f"pallas_triton needs a CUDA GPU (the default device is {device.platform}); "
                "pass interpret=True to run its kernels in the Pallas interpreter")
    capability = getattr(device, "compute_capability", None)
    try:
        capability = float(capability)
    except (TypeError, ValueError):
        return f"pallas_triton needs a CUDA GPU; {device.device_kind} reports no compute capability"
    if capability < MIN_COMPUTE_CAPABILITY:
        return (f"pallas_triton needs compute capability >= {MIN_COMPUTE_CAPABILITY}, "
                f"{device.device_kind} has {capability}")
    return None


_op = make_op(blocked.forward, blocked.backward)


def attention(q, k, v, *, lengths, num_candidates, positions, timestamps, alibi_slopes,
              time_slopes, kind, scale, interpret, block_sizes=None):
    """[B, S, H, Dv]; arguments validated and defaulted by `genrank_jax.kernels.attention`."""
    if block_sizes is None:
        block_sizes = BlockSizes.for_device(q.shape[-1], q.dtype)
    if not isinstance(block_sizes, BlockSizes):
        raise TypeError(f"block_sizes must be a pallas_triton.BlockSizes, got {type(block_sizes)}")
    tiling = block_sizes.tiling(q.shape[1])
    params = None
    if not interpret:
        params = _TritonParams(num_warps=block_sizes.num_warps, num_stages=block_sizes.num_stages)
    static = blocked.Static(
        kind=kind, scale=scale, has_alibi=alibi_slopes is not None,
        has_time=time_slopes is not None, tiling=tiling, interpret=interpret,
        compiler_params=params, bwd_compiler_params=params)
    # Triton tensors need power-of-two shapes: D = 96 runs as 128 with zero columns.
    return padded_call(
        _op, static, q, k, v, lengths=lengths, num_candidates=num_candidates,
        positions=positions, timestamps=timestamps, alibi_slopes=alibi_slopes,
        time_slopes=time_slopes, seq_multiple=tiling.largest,
        head_dim=max(16, next_power_of_two(q.shape[-1])),
        value_dim=max(16, next_power_of_two(v.shape[-1])))
