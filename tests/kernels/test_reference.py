"""The jnp reference against the loop oracle on a fixed case, and the op's argument checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genrank_jax.kernels import attention
from tests.kernels.oracle import oracle_attention
from tests.kernels.parity import Case, make_inputs


@pytest.mark.parametrize("kind", ["softmax", "silu"])
@pytest.mark.parametrize("seed", [0, 1])
def test_reference_matches_loop(kind, seed):
    case = Case(batch=3, seq_len=9, heads=2, head_dim=4, kind=kind, seed=seed,
                lengths=(9, 5, 0), num_candidates=(3, 5, 0))
    q, k, v, arguments, _ = make_inputs(case)
    got = attention(q, k, v, **arguments, kind=kind, impl="xla")
    numpy_arguments = {name: np.asarray(value) for name, value in arguments.items()}
    want = oracle_attention(q, k, v, kind=kind, **numpy_arguments)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


def test_named_backend_that_cannot_run_raises():
    q, k, v, arguments, _ = make_inputs(Case(seq_len=8, head_dim=4))
    with pytest.raises(NotImplementedError):
        attention(q, k, v, **arguments, impl="pallas_mosaic_gpu", interpret=False)


def test_bad_shapes_are_named():
    q, k, v, arguments, _ = make_inputs(Case(seq_len=8, head_dim=4))
    with pytest.raises(ValueError, match="lengths"):
        attention(q, k, v, **{**arguments, "lengths": jnp.zeros((5,), jnp.int32)})
    with pytest.raises(ValueError, match="k must have shape"):
        attention(q, k[:, :4], v, **arguments)


@pytest.mark.skipif(__import__("jax").devices()[0].platform != "cpu", reason="the CPU's default: on a CPU only")
def test_default_impl_is_the_reference_on_cpu():
    from genrank_jax.kernels import default_impl

    assert default_impl(jnp.float32) == "xla" and default_impl(jnp.bfloat16) == "xla"


def test_out_of_range_counts_are_errors_when_concrete():
    q, k, v, arguments, _ = make_inputs(Case(batch=2, seq_len=8, head_dim=4))
    bad_cases = [
        (dict(lengths=jnp.array([9, 3], jnp.int32)), r"lengths must lie in \[0, S=8\]; rows \[0\]"),
        (dict(lengths=jnp.array([4, -1], jnp.int32)), r"lengths must lie in .* rows \[1\] have \[-1\]"),
        (dict(lengths=jnp.array([4, 3], jnp.int32), num_candidates=jnp.array([5, 0], jnp.int32)),
         r"num_candidates must lie in \[0, lengths\]; rows \[0\] have \[5\] \(lengths \[4\]\)"),
        (dict(lengths=jnp.array([4, 3], jnp.int32), num_candidates=jnp.array([0, -2], jnp.int32)),
         r"num_candidates must lie in .* rows \[1\]"),
    ]
    for override, message in bad_cases:
        with pytest.raises(ValueError, match=message):
            attention(q, k, v, **{**arguments, **override}, impl="xla")


def test_traced_out_of_range_counts_are_clipped():
    q, k, v, arguments, _ = make_inputs(Case(batch=2, seq_len=8, head_dim=4))
    clipped = {**arguments, "lengths": jnp.array([8, 3], jnp.int32),
               "num_candidates": jnp.array([2, 3], jnp.int32)}
    wild = {**arguments, "lengths": jnp.array([12, 3], jnp.int32),
            "num_candidates": jnp.array([2, 7], jnp.int32)}
    run = jax.jit(lambda arguments: attention(q, k, v, **arguments, impl="xla"))
    np.testing.assert_array_equal(np.asarray(run(wild)), np.asarray(run(clipped)))
