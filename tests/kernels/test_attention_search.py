"""A small randomized search: every Pallas backend against the reference, in interpret mode.

Hypothesis draws shapes, lengths, candidate counts, bias terms, kinds and dtypes; `check_parity`
draws the inputs. Derandomized, so CI sees the same examples on every run. Every backend must
import and run here in interpret mode.
"""

import jax.numpy as jnp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genrank_jax.kernels import unavailable_reason
from tests.kernels.parity import Case, check_parity

BACKENDS = ("pallas_triton", "pallas_mosaic_gpu", "pallas_tpu")


def require_backend(impl):
    """Every backend is written: one that cannot run in interpret mode is a failure, never a skip."""
    reason = unavailable_reason(impl, interpret=True)
    assert reason is None, f"{impl} exists but cannot run in interpret mode: {reason}"


@st.composite
def cases(draw):
    batch = draw(st.integers(1, 3))
    seq_len = draw(st.integers(1, 48))
    lengths = tuple(draw(st.lists(st.integers(0, seq_len), min_size=batch, max_size=batch)))
    candidates = tuple(draw(st.integers(0, n)) for n in lengths)
    with_timestamps = draw(st.booleans())
    return Case(
        batch=batch, seq_len=seq_len, heads=draw(st.integers(1, 2)),
        head_dim=draw(st.sampled_from([32, 64])), value_dim=draw(st.sampled_from([None, 32, 48])),
        dtype=draw(st.sampled_from([jnp.float32, jnp.bfloat16])),
        kind=draw(st.sampled_from(["softmax", "silu"])),
        lengths=lengths, num_candidates=candidates,
        with_positions=draw(st.booleans()), with_timestamps=with_timestamps,
        with_alibi=draw(st.booleans()), with_time_bias=with_timestamps and draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


def tpu_block_sizes(draw_block):
    from genrank_jax.kernels.pallas_tpu import BlockSizes
    return BlockSizes(block_q=draw_block(), block_k=draw_block())


@settings(max_examples=6, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), data=st.data())
def search(impl, case, data):
    block_sizes = None  # each GPU backend's own defaults
    if impl == "pallas_tpu":  # tiles far below the sequence, so the block schedule is exercised
        block_sizes = tpu_block_sizes(lambda: data.draw(st.sampled_from([8, 16]), label="block"))
    check_parity(impl, case, interpret=True, block_sizes=block_sizes)


@pytest.mark.parametrize("impl", BACKENDS)
def test_backend_matches_reference(impl):
    require_backend(impl)  # outside the search: a skip is not a failing example
    search(impl)
