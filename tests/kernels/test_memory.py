"""Compiled memory of the attention op: linear in S for the kernel, quadratic for the reference.

XLA's `memory_analysis()` of the compiled program (temp + output bytes), forward and forward +
backward, at S = 1k, 2k, 4k. The kernel path is `pallas_tpu` with `interpret=True`: Pallas's HLO
interpreter lowers the grid to a while loop that slices one block per step, so its buffers are the
blocks, the VMEM scratch and the O(S) outputs and residuals, as on the device. (Under
`pltpu.force_tpu_interpret_mode()` the blocks live in the interpreter's Python-side memory, out of
XLA's sight, so that mode says nothing about memory.) `pytest -s` prints the table.
"""

import jax
import jax.numpy as jnp
import pytest

from genrank_jax.kernels import attention
from genrank_jax.kernels.pallas_tpu import BlockSizes

SEQ_LENS = (1024, 2048, 4096)
HEAD_DIM = 64
BLOCKS = BlockSizes(block_q=512, block_k=512)  # large tiles keep the interpreted grid small


def compiled_bytes(impl, seq_len, *, backward):
    """(temp, output) bytes of the compiled op on [1, S, 1, 64] f32 with both bias terms."""
    tokens = jax.ShapeDtypeStruct((1, seq_len, 1, HEAD_DIM), jnp.float32)
    per_token = lambda dtype: jax.ShapeDtypeStruct((1, seq_len), dtype)
    per_sample = jax.ShapeDtypeStruct((1,), jnp.int32)
    slopes = jax.ShapeDtypeStruct((1,), jnp.float32)

    def forward(q, k, v, lengths, candidates, positions, timestamps, alibi, time):
        return attention(q, k, v, lengths=lengths, num_candidates=candidates, positions=positions,
                         timestamps=timestamps, alibi_slopes=alibi, time_slopes=time, impl=impl,
                         interpret=True, block_sizes=None if impl == "xla" else BLOCKS)

    def forward_backward(q, k, v, *metadata):
        out, vjp = jax.vjp(lambda q, k, v: forward(q, k, v, *metadata), q, k, v)
        return out, vjp(out)

    compiled = jax.jit(forward_backward if backward else forward).lower(
        tokens, tokens, tokens, per_sample, per_sample, per_token(jnp.int32),
        per_token(jnp.float32), slopes, slopes).compile()
    analysis = compiled.memory_analysis()
    return analysis.temp_size_in_bytes, analysis.output_size_in_bytes


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward+backward"])
def test_kernel_memory_is_linear_and_reference_quadratic(backward):
    rows = {impl: [compiled_bytes(impl, s, backward=backward) for s in SEQ_LENS]
            for impl in ("xla", "pallas_tpu")}
    mib = lambda x: f"{x / 2**20:9.2f}"
    print(f"\ncompiled memory, {'forward + backward' if backward else 'forward'} "
          f"(MiB; B=1, H=1, D={HEAD_DIM}, f32)")
    print(f"{'S':>6} | {'xla temp':>9} {'xla out':>9} | {'tpu temp':>9} {'tpu out':>9}")
    for s, (x_temp, x_out), (k_temp, k_out) in zip(SEQ_LENS, rows["xla"], rows["pallas_tpu"]):
        print(f"{s:>6} | {mib(x_temp)} {mib(x_out)} | {mib(k_temp)} {mib(k_out)}")

    for step in range(len(SEQ_LENS) - 1):
        (x_small, _), (x_large, _) = rows["xla"][step], rows["xla"][step + 1]
        small, large = (sum(bytes_) for bytes_ in rows["pallas_tpu"][step:step + 2])
        # reference: [B, H, S, S] logits, bias and mask -> ~4x per doubling
        assert x_large / x_small > 3.0, (SEQ_LENS[step], x_small, x_large)
        # kernel: blocks and scratch are fixed, everything else is O(S) -> <= ~2x per doubling
        assert large / small <= 2.5, (SEQ_LENS[step], small, large)
    kernel_4k, reference_4k = sum(rows["pallas_tpu"][-1]), sum(rows["xla"][-1])
    assert kernel_4k < reference_4k / 4, (kernel_4k, reference_4k)
