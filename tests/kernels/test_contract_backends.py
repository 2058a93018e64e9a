"""Contract checks that every backend runs (the Pallas ones in interpret mode) on tiny shapes.

- One-hot values (v = identity on the key axis) make the output the attention weights
  themselves, compared with the loop oracle pair by pair: a single wrongly masked key fails, and
  a masked pair must come out exactly 0.
- NaN and Inf at padding positions (q, k, v, timestamps past `lengths`) change nothing: valid
  outputs and gradients are bit-for-bit those of clean padding, rows past the length are 0.
- Slopes and timestamps are constants: every backend returns a zero gradient for them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genrank_jax.kernels import alibi_slopes, attention
from tests.kernels.oracle import attends, oracle_weights

BACKENDS = ("xla", "pallas_triton", "pallas_mosaic_gpu", "pallas_tpu")
# Interpret-mode tiles are 16 tokens: lengths on both sides of an edge, one all-candidate row.
LENGTHS, CANDIDATES = (20, 17, 16, 1), (3, 0, 16, 1)
SEQ_LEN, HEADS, HEAD_DIM = 20, 2, 16


def _metadata(rng):
    batch = len(LENGTHS)
    positions = np.tile(np.arange(SEQ_LEN), (batch, 1))
    for b, (length, candidates) in enumerate(zip(LENGTHS, CANDIDATES)):
        positions[b, length - candidates:] = length - candidates
    times = -np.cumsum(rng.exponential(300.0, size=(batch, SEQ_LEN)), axis=1)[:, ::-1].copy()
    return dict(lengths=np.array(LENGTHS, np.int32), num_candidates=np.array(CANDIDATES, np.int32),
                positions=positions.astype(np.int32), timestamps=times.astype(np.float32),
                alibi_slopes=np.asarray(alibi_slopes(HEADS)),
                time_slopes=np.asarray(alibi_slopes(HEADS)) * 0.5)


def _interpret(impl: str, dtype=jnp.float32) -> bool:
    """Pallas backends run in interpret mode, except the GPU ones on a GPU: there these contract
    checks run the compiled kernels (the device calls run this file). Mosaic GPU compiles 16-bit
    inputs only (WGMMA): with f32 it stays interpreted."""
    on_gpu = jax.default_backend() == "gpu" and (
        impl == "pallas_triton" or (impl == "pallas_mosaic_gpu" and jnp.dtype(dtype).itemsize == 2))
    return impl != "xla" and not on_gpu


def _nan_check_dtype(impl: str):
    """bf16 where that is what makes the kernel compile (Mosaic GPU on a GPU), else f32: the NaN and
    padding checks compare a backend with itself or with the XLA reference in the same dtype."""
    return jnp.bfloat16 if jax.default_backend() == "gpu" and impl == "pallas_mosaic_gpu" else jnp.float32


def _as_jax(arguments):
    return {name: jnp.asarray(value) for name, value in arguments.items()}


@pytest.mark.parametrize("kind", ["softmax", "silu"])
@pytest.mark.parametrize("impl", BACKENDS)
def test_one_hot_values_give_the_weights(impl, kind):
    rng = np.random.default_rng(0)
    batch = len(LENGTHS)
    q = rng.normal(size=(batch, SEQ_LEN, HEADS, HEAD_DIM)).astype(np.float32)
    k = rng.normal(size=(batch, SEQ_LEN, HEADS, HEAD_DIM)).astype(np.float32)
    v = np.broadcast_to(np.eye(SEQ_LEN, dtype=np.float32)[None, :, None, :],
                        (batch, SEQ_LEN, HEADS, SEQ_LEN))
    arguments = _metadata(rng)
    out = attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), **_as_jax(arguments),
                    kind=kind, impl=impl, interpret=_interpret(impl))
    got = np.transpose(np.asarray(out, np.float64), (0, 2, 1, 3))  # [B, H, S(query), S(key)]
    want = oracle_weights(q, k, kind=kind, **arguments)
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)
    allowed = np.array([[[attends(i, j, LENGTHS[b], CANDIDATES[b]) for j in range(SEQ_LEN)]
                         for i in range(SEQ_LEN)] for b in range(batch)])
    masked = np.broadcast_to(~allowed[:, None], got.shape)
    assert not got[masked].any(), f"{impl}: a masked pair has a nonzero weight"


def _poisoned_inputs(poison: bool):
    """q, k, v [B, S, H, D] bf16-exact f32 and metadata; padding holds NaN / Inf when `poison`."""
    rng = np.random.default_rng(1)
    batch = len(LENGTHS)
    q, k, v = (rng.normal(size=(batch, SEQ_LEN, HEADS, HEAD_DIM)).astype(np.float32)
               for _ in range(3))
    arguments = _metadata(rng)
    if poison:
        for b, length in enumerate(LENGTHS):
            q[b, length:] = np.nan
            k[b, length:] = np.inf
            v[b, length:] = np.nan
            v[b, length + 1:] = -np.inf
            arguments["timestamps"][b, length:] = np.nan
    cotangent = rng.normal(size=v.shape).astype(np.float32)
    return q, k, v, arguments, cotangent


@pytest.mark.parametrize("impl", BACKENDS)
@pytest.mark.parametrize("kind", ["softmax", "silu"])
def test_nan_and_inf_padding_never_reach_valid_outputs(impl, kind):
    results, dtype = [], _nan_check_dtype(impl)
    for poison in (False, True):
        q, k, v, arguments, cotangent = _poisoned_inputs(poison)
        forward = lambda q, k, v: attention(q, k, v, **_as_jax(arguments), kind=kind, impl=impl,  # noqa: B023 - called in this iteration
                                            interpret=_interpret(impl, dtype))
        out, vjp = jax.vjp(forward, *(jnp.asarray(x, dtype) for x in (q, k, v)))
        grads = vjp(jnp.asarray(cotangent, dtype))
        results.append([np.asarray(x, np.float32) for x in (out, *grads)])
    for name, clean, poisoned in zip(("out", "dq", "dk", "dv"), *results):
        assert np.isfinite(poisoned).all(), f"{impl} {name}: NaN/Inf escaped the padding"
        np.testing.assert_array_equal(poisoned, clean, err_msg=f"{impl} {name}")
        for b, length in enumerate(LENGTHS):
            assert not poisoned[b, length:].any(), f"{impl} {name}: nonzero past length {length}"


@pytest.mark.parametrize("impl", BACKENDS)
def test_slopes_and_timestamps_get_no_gradient(impl):
    rng = np.random.default_rng(2)
    q, k, v = (jnp.asarray(rng.normal(size=(len(LENGTHS), SEQ_LEN, HEADS, HEAD_DIM)), jnp.float32)
               for _ in range(3))
    arguments = _as_jax(_metadata(rng))
    constants = {name: arguments.pop(name) for name in ("timestamps", "alibi_slopes", "time_slopes")}

    def loss(q, constants):
        out = attention(q, k, v, **arguments, **constants, kind="softmax", impl=impl,
                        interpret=_interpret(impl))
        return jnp.sum(out * v)

    dq, d_constants = jax.grad(loss, argnums=(0, 1))(q, constants)
    assert np.abs(np.asarray(dq)).max() > 0  # the loss does depend on the inputs
    for name, grad in d_constants.items():
        assert not np.asarray(grad).any(), f"{impl}: {name} got a gradient"


@pytest.mark.parametrize("impl", BACKENDS[1:])
@pytest.mark.parametrize("kind", ["softmax", "silu"])
def test_nan_and_inf_at_a_valid_token_propagate_as_in_the_reference(impl, kind):
    """NaN or Inf in q, k or v at a valid token reaches exactly the outputs it reaches in the
    reference (the GPU tiles used to zero a row whose softmax sum was NaN), and rows past the
    length stay 0 (the TPU kernel used to write 0 * NaN there)."""
    rng = np.random.default_rng(3)
    batch = len(LENGTHS)
    clean = [rng.normal(size=(batch, SEQ_LEN, HEADS, HEAD_DIM)).astype(np.float32) for _ in range(3)]
    arguments = _as_jax(_metadata(rng))
    for name in ("q", "k", "v"):
        for value in (np.nan, np.inf):
            q, k, v = (x.copy() for x in clean)
            poisoned = dict(q=q, k=k, v=v)[name]
            poisoned[0, 5, 0, 3] = value  # a history token of a sample with candidates
            poisoned[2, 3, 1, 0] = value  # a candidate of an all-candidate sample
            dtype = _nan_check_dtype(impl)
            inputs = [jnp.asarray(x, dtype) for x in (q, k, v)]
            want = np.asarray(attention(*inputs, **arguments, kind=kind, impl="xla"), np.float32)
            got = np.asarray(attention(*inputs, **arguments, kind=kind, impl=impl,
                                       interpret=_interpret(impl, dtype)), np.float32)
            assert np.isnan(want).any(), "the case must reach an output"
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{impl} {name}={value}")
            tolerance = dict(atol=1e-5, rtol=1e-6) if dtype == jnp.float32 else dict(atol=3e-2, rtol=3e-2)
            np.testing.assert_allclose(got, want, **tolerance, err_msg=f"{impl} {name}={value}")
            for b, length in enumerate(LENGTHS):
                assert not got[b, length:].any(), f"{impl} {name}={value}: nonzero past length {length}"
