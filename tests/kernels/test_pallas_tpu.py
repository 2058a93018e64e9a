"""The Mosaic TPU backend against the reference, forward and gradients.

`TestPallasTpuInterpret` is the full suite with `interpret=True` (Pallas's HLO interpreter: a
compiled loop over the grid, fast on the CPU). `TestPallasTpuSimulated` repeats the edge cases
under `pltpu.force_tpu_interpret_mode()`, which simulates the TPU's memories (scalar prefetch in
SMEM, block DMAs into VMEM with out-of-bounds reads raising, scratch NaN until written) at ~100x
the cost, so it stays small. `TestPallasTpuDevice` is the full suite compiled for a TPU
(`-m device`), with TPU-legal 128-wide tiles.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from genrank_jax.kernels import attention, pallas_tpu, unavailable_reason, valid_pairs
from genrank_jax.kernels.pallas_tpu import BlockSizes
from tests.kernels.parity import Case, check_parity, make_inputs, run


class _Blocks:
    INTERPRET = True
    # small, unequal tiles so a 40-token sequence spans 5 x 3 blocks
    BLOCK_Q, BLOCK_K = 8, 16

    @property
    def block_sizes(self):
        return BlockSizes(block_q=self.BLOCK_Q, block_k=self.BLOCK_K)

    def edge_case(self, **fields):
        """One row per edge: lengths 0, 1, block-1, block, block+1, full; candidates 0, 1, all,
        and a candidate run that crosses a block edge."""
        block = self.BLOCK_K
        seq_len = 2 * block + 8
        defaults = dict(batch=6, seq_len=seq_len, heads=2, head_dim=32, value_dim=48,
                        lengths=(0, 1, block - 1, block, block + 1, seq_len),
                        num_candidates=(0, 1, block - 1, 0, 1, block // 2 + 3))
        return Case(**{**defaults, **fields})

    def check(self, case, block_sizes=None):
        check_parity("pallas_tpu", case, interpret=self.INTERPRET,
                     block_sizes=block_sizes or self.block_sizes)


class TestPallasTpuSimulated(_Blocks):
    @pytest.fixture(autouse=True)
    def _simulate_tpu(self):
        with pltpu.force_tpu_interpret_mode():
            yield

    @pytest.mark.parametrize("kind,dtype", [("softmax", jnp.float32), ("silu", jnp.bfloat16)],
                             ids=["softmax-f32", "silu-bf16"])
    def test_edges(self, kind, dtype):
        self.check(self.edge_case(kind=kind, dtype=dtype, heads=1, seed=1))


class TestPallasTpuInterpret(_Blocks):
    @pytest.fixture(autouse=True)
    def _device(self):
        reason = unavailable_reason("pallas_tpu", interpret=self.INTERPRET)
        if reason is not None:
            pytest.skip(reason)

    @pytest.mark.parametrize("kind", ["softmax", "silu"])
    @pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
    def test_edges(self, kind, dtype):
        self.check(self.edge_case(kind=kind, dtype=dtype, seed=1))

    @pytest.mark.parametrize("kind,bias", [
        ("softmax", dict(with_positions=False, with_timestamps=False, with_alibi=False)),
        ("softmax", dict(with_time_bias=False)),  # position bias only
        ("silu", dict(with_positions=False, with_alibi=False)),  # time bias only
    ], ids=["softmax-no-bias", "softmax-alibi-only", "silu-time-only"])
    def test_bias_terms(self, kind, bias):
        self.check(self.edge_case(kind=kind, seed=2, **bias))

    def test_random_lengths_and_wide_heads(self):
        # head dim 256 with a narrower value dim; lengths and candidates drawn at random
        self.check(Case(batch=3, seq_len=2 * self.BLOCK_K + 3, heads=1, head_dim=256,
                        value_dim=128, seed=4))

    def test_rows_past_length_are_exactly_zero(self):
        case = self.edge_case(seed=5)
        out, grads = run("pallas_tpu", case, interpret=self.INTERPRET, block_sizes=self.block_sizes)
        for b, length in enumerate(case.lengths):
            assert not out[b, length:].any()
            for grad in grads:
                assert not grad[b, length:].any()

    def test_kv_blocks_smaller_than_q_blocks(self):
        self.check(self.edge_case(kind="silu", seed=8),
                   block_sizes=BlockSizes(block_q=2 * self.BLOCK_K, block_k=self.BLOCK_K))

    def test_default_block_sizes(self):
        # no block_sizes: BlockSizes.for_device picks them (one tile here in interpret mode)
        check_parity("pallas_tpu", Case(seq_len=21, seed=7), interpret=self.INTERPRET)


@pytest.mark.device
class TestPallasTpuDevice(TestPallasTpuInterpret):
    INTERPRET = False
    BLOCK_Q, BLOCK_K = 128, 128

    def test_deterministic(self):
        # on a device only: the CPU interpreter runs the grid in order and cannot fail this
        case = self.edge_case(kind="softmax", dtype=jnp.bfloat16, heads=1, seed=6)
        first = run("pallas_tpu", case, interpret=False, block_sizes=self.block_sizes)
        second = run("pallas_tpu", case, interpret=False, block_sizes=self.block_sizes)
        np.testing.assert_array_equal(first[0], second[0])
        for a, b in zip(first[1], second[1]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["softmax", "silu"])
@pytest.mark.parametrize("dtype,head_dim,value_dim,block_q", [
    (jnp.float32, 64, 64, 128), (jnp.bfloat16, 32, 48, 16), (jnp.bfloat16, 256, 128, 256)],
    ids=["f32", "bf16-narrow", "bf16-wide"])
def test_lowers_to_mosaic_for_tpu(kind, dtype, head_dim, value_dim, block_q):
    """The compiled (non-interpret) path through Pallas's Mosaic lowering, without a TPU:
    block shapes, scalar-prefetch index maps and every op in the three kernel bodies."""
    batch, seq_len, heads = 2, 300, 2
    q, k, v = (jax.ShapeDtypeStruct((batch, seq_len, heads, d), dtype)
               for d in (head_dim, head_dim, value_dim))
    ints, per_head = jax.ShapeDtypeStruct((batch,), jnp.int32), jax.ShapeDtypeStruct((heads,), jnp.float32)
    positions = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)
    timestamps = jax.ShapeDtypeStruct((batch, seq_len), jnp.float32)

    def forward_backward(q, k, v, lengths, candidates, positions, timestamps, alibi, time):
        forward = lambda q, k, v: pallas_tpu.attention(
            q, k, v, lengths=lengths, num_candidates=candidates, positions=positions,
            timestamps=timestamps, alibi_slopes=alibi, time_slopes=time, kind=kind, scale=0.1,
            interpret=False, block_sizes=BlockSizes(block_q=block_q, block_k=256))
        out, vjp = jax.vjp(forward, q, k, v)
        return out, vjp(out)

    exported = jax.export.export(jax.jit(forward_backward), platforms=["tpu"])(
        q, k, v, ints, ints, positions, timestamps, per_head, per_head)
    assert exported.mlir_module().count("tpu_custom_call") == 3  # forward, dq, dk/dv


# --- the block schedule: which tiles run and which blocks are fetched ---------------------------

def _all_samples(seq_len):
    """Every (length, num_candidates) with length <= seq_len, as int32 arrays."""
    pairs = [(n, c) for n in range(seq_len + 1) for c in range(n + 1)]
    lengths, candidates = (np.array(x, np.int32) for x in zip(*pairs))
    return lengths, candidates


def _tile_has_valid_pair(lengths, candidates, seq_len, block_q, block_k):
    """[N, num q blocks, num kv blocks] bool by brute force over the full mask."""
    index = np.arange(seq_len)
    mask = np.asarray(valid_pairs(index[None, :, None], index[None, None, :],
                                  lengths[:, None, None], candidates[:, None, None]))
    return mask.reshape(len(lengths), seq_len // block_q, block_q,
                        seq_len // block_k, block_k).any(axis=(2, 4))


def _dmas(fetched):
    """Block copies a pipeline issues for a [N, outer, inner] schedule of block indices."""
    flat = fetched.reshape(len(fetched), -1)
    return 1 + (flat[:, 1:] != flat[:, :-1]).sum(axis=1)


@pytest.mark.parametrize("block_q,block_k", [(8, 16), (16, 8), (8, 8), (16, 16)])
def test_schedule_runs_exactly_the_live_tiles_and_fetches_no_dead_block(block_q, block_k):
    seq_len = 48
    lengths, candidates = _all_samples(seq_len)
    cfg = pallas_tpu._Config(kind="softmax", scale=1.0, block_q=block_q, block_k=block_k,
                             num_heads=1, with_alibi=False, with_time=False, interpret=True)
    want = _tile_has_valid_pair(lengths, candidates, seq_len, block_q, block_k)
    num_q, num_k = want.shape[1:]
    grid = [(i, j) for i in range(num_q) for j in range(num_k)]
    as_np = lambda f, *args: np.asarray(f(*args, lengths, candidates, cfg))

    live = np.stack([as_np(pallas_tpu._kv_block_is_live, i, j) for i, j in grid], 1)
    live_t = np.stack([as_np(pallas_tpu._q_block_is_live, i, j) for i, j in grid], 1)
    np.testing.assert_array_equal(live.reshape(want.shape), want)
    np.testing.assert_array_equal(live_t.reshape(want.shape), want)

    # forward and dq grid (q outer, kv inner): live steps fetch their own kv block, and every
    # other step re-uses a block already fetched, so copies <= live tiles
    fetched = np.stack([as_np(pallas_tpu._kv_block_to_fetch, i, j) for i, j in grid], 1)
    kv_index = np.array([j for _, j in grid])
    assert (fetched == kv_index)[live].all()
    assert (_dmas(fetched) <= np.maximum(want.sum(axis=(1, 2)), 1)).all()

    # dk/dv grid (kv outer, q inner)
    grid_t = [(j, i) for j in range(num_k) for i in range(num_q)]
    fetched_t = np.stack([as_np(pallas_tpu._q_block_to_fetch, i, j) for j, i in grid_t], 1)
    live_t = np.stack([as_np(pallas_tpu._q_block_is_live, i, j) for j, i in grid_t], 1)
    q_index = np.array([i for _, i in grid_t])
    assert (fetched_t == q_index)[live_t].all()
    assert (_dmas(fetched_t) <= np.maximum(want.sum(axis=(1, 2)), 1)).all()
    assert ((fetched >= 0) & (fetched < num_k)).all() and ((fetched_t >= 0) & (fetched_t < num_q)).all()


# --- BlockSizes and call-time contracts ---------------------------------------------------------

@pytest.mark.parametrize("fields,message", [
    (dict(block_q=0), "block_q must be a positive int"),
    (dict(block_k=-8), "block_k must be a positive int"),
    (dict(block_q=16.0), "block_q must be a positive int"),
    (dict(block_k=True), "block_k must be a positive int"),
    (dict(block_q=12), "block_q=12 must be a multiple of 8"),
])
def test_block_sizes_are_validated(fields, message):
    with pytest.raises(ValueError, match=message):
        BlockSizes(**fields)


def test_block_sizes_are_frozen_and_tpu_rules_are_named():
    sizes = BlockSizes(block_q=8, block_k=16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sizes.block_q = 16
    with pytest.raises(ValueError, match="block_k=16 must be a multiple of 128"):
        sizes.check_compiles_for_tpu()
    BlockSizes(block_q=16, block_k=512).check_compiles_for_tpu()


def test_block_sizes_for_device():
    assert BlockSizes.for_device("TPU v4") == BlockSizes(128, 128)
    assert BlockSizes.for_device("TPU7x") == BlockSizes(256, 512)
    assert BlockSizes.for_device("TPU v6 lite", seq_len=4096) == BlockSizes(256, 512)
    assert BlockSizes.for_device("TPU v6 lite", seq_len=200) == BlockSizes(256, 256)
    assert BlockSizes.for_device("TPU v5 lite", seq_len=20) == BlockSizes(128, 128)
    assert BlockSizes.for_device("cpu", seq_len=21, interpret=True) == BlockSizes(24, 24)
    assert BlockSizes.for_device("cpu", seq_len=1000, interpret=True) == BlockSizes(128, 128)


def test_call_contracts():
    q, k, v, arguments, _ = make_inputs(Case(seq_len=8))
    with pytest.raises(TypeError, match="block_sizes must be a pallas_tpu.BlockSizes"):
        attention(q, k, v, **arguments, impl="pallas_tpu", interpret=True, block_sizes=(8, 8))
    assert pallas_tpu.unavailable_reason(True) is None


@pytest.mark.skipif(jax.devices()[0].platform == "tpu", reason="checks the refusal off a TPU")
def test_compiled_tpu_kernel_is_refused_off_a_tpu():
    q, k, v, arguments, _ = make_inputs(Case(seq_len=8))
    assert pallas_tpu.unavailable_reason(False) is not None
    with pytest.raises(NotImplementedError, match="interpret=True"):
        attention(q, k, v, **arguments, impl="pallas_tpu")
