"""The Hopper kernels lowered for CUDA without a GPU, written out as text to diff two checkouts.

    python bench/from_checkout.py bench/hopper_lowered.py OUT_DIR [CONFIG ...]

For a change to `kernels/_gpu_hopper.py` that must not change the kernels (a refactor): run this
on the old and on the new checkout, then `diff -r` the two folders. Per config it writes the
Mosaic GPU module of each kernel, `CONFIG.forward.mlir`, `CONFIG.dq.mlir`, `CONFIG.dkv.mlir`,
without debug info (moved source lines do not count; the modules serialized into the StableHLO
carry source locations, so that text differs after any edit), and the StableHLO around them,
`CONFIG.hlo.txt`, with each kernel's serialized module and hash blanked. The configs cover both
lowering modes, head dims 64 to 256, Dv != D, one and two compute warpgroups, a 3-deep ring,
softmax and SiLU, without a bias and with either or both (a bias brings the ordered path).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from kernel_ops import Capture  # noqa: E402

CONFIGS = {
    "d64_softmax_bias_lane": dict(head_dim=64, value_dim=64, kind="softmax", alibi=True,
                                  time_bias=True, lowering="lane"),
    "d64_softmax_bias_warpgroup": dict(head_dim=64, value_dim=64, kind="softmax", alibi=True,
                                       time_bias=True, lowering="warpgroup"),
    "d64_silu_lane": dict(head_dim=64, value_dim=64, kind="silu", alibi=False, time_bias=False,
                          lowering="lane"),
    "d64_silu_warpgroup": dict(head_dim=64, value_dim=64, kind="silu", alibi=False,
                               time_bias=False, lowering="warpgroup"),
    "d128_v64_silu_bias": dict(head_dim=128, value_dim=64, kind="silu", alibi=True,
                               time_bias=True),
    "d64_softmax_alibi_1wg_3stages": dict(head_dim=64, value_dim=64, kind="softmax", alibi=True,
                                          time_bias=False, compute_wgs=1, stages=3),
    "d64_v128_softmax_time": dict(head_dim=64, value_dim=128, kind="softmax", alibi=False,
                                  time_bias=True),
    "d256_silu": dict(head_dim=256, value_dim=256, kind="silu", alibi=False, time_bias=False),
}
# a kernel's serialized module and its hash: both change with any source line
_SERIALIZED = re.compile(r'kernel_hash = "(?:[^"\\]|\\.)*", module = "(?:[^"\\]|\\.)*"')


class _Gpu:
    platform = "gpu"  # BlockSizes.for_device picks the Hopper tiling


def lowered(head_dim: int, value_dim: int, kind: str, alibi: bool, time_bias: bool,
            **block_overrides) -> tuple[str, list[str]]:
    """(StableHLO text, [forward, dq, dk/dv Mosaic GPU modules]) of jax.grad through attention."""
    from genrank_jax.kernels import alibi_slopes, pallas_mosaic_gpu
    batch, seq_len, heads = 2, 200, 2
    sizes = pallas_mosaic_gpu.BlockSizes.for_device(head_dim, jnp.bfloat16, device=_Gpu())
    sizes = dataclasses.replace(sizes, **block_overrides)
    slopes = alibi_slopes(heads)

    def loss(q, k, v, lengths, candidates, positions, times):
        out = pallas_mosaic_gpu.attention(
            q, k, v, lengths=lengths, num_candidates=candidates, positions=positions,
            timestamps=times, alibi_slopes=slopes if alibi else None,
            time_slopes=slopes if time_bias else None, kind=kind, scale=head_dim ** -0.5,
            interpret=False, block_sizes=sizes)
        return out.astype(jnp.float32).sum()

    spec = jax.ShapeDtypeStruct
    keys = spec((batch, seq_len, heads, head_dim), jnp.bfloat16)
    values = spec((batch, seq_len, heads, value_dim), jnp.bfloat16)
    counts, rows = spec((batch,), jnp.int32), spec((batch, seq_len), jnp.int32)
    with Capture() as capture:
        text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(
            keys, keys, values, counts, counts, rows, spec((batch, seq_len), jnp.float32)
        ).lower(lowering_platforms=("cuda",)).as_text()
    return text, capture.modules


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    out = pathlib.Path(argv[0])
    names = argv[1:] or list(CONFIGS)
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        print(f"unknown configs {unknown}; known: {list(CONFIGS)}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        start = time.perf_counter()
        text, modules = lowered(**CONFIGS[name])
        if len(modules) != 3:
            raise RuntimeError(f"{name}: expected 3 kernels (forward, dq, dk/dv), got {len(modules)}")
        (out / f"{name}.hlo.txt").write_text(_SERIALIZED.sub("kernel_hash = _, module = _", text))
        for kernel, module in zip(("forward", "dq", "dkv"), modules):
            (out / f"{name}.{kernel}.mlir").write_text(module)
        print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
