"""The jnp reference against the independent loop oracle (`oracle.py`), drawn by hypothesis.

Forward on shapes up to a 17-token sequence (both sides of a 16-token tile edge), gradients by
central finite differences of the float64 oracle on every input element of small shapes. Draws
cover lengths 0, 1 and full, no candidates with history, one candidate, all candidates, each bias
on and off, and `scale` given explicitly or defaulted.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genrank_jax.kernels import attention
from tests.kernels.oracle import oracle_attention


@st.composite
def problems(draw, seq_lens, max_heads=2, head_dims=(1, 2, 3, 4)):
    """(q, k, v, arguments for `attention`, cotangent) as float64 numpy, plus the draw's seed."""
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    batch = draw(st.integers(1, 3))
    seq_len = draw(st.sampled_from(seq_lens))
    heads = draw(st.integers(1, max_heads))
    head_dim = draw(st.sampled_from(head_dims))
    value_dim = draw(st.sampled_from(head_dims))
    length_choice = st.one_of(st.just(0), st.just(1), st.just(seq_len), st.integers(0, seq_len))
    lengths = np.array([min(draw(length_choice), seq_len) for _ in range(batch)])
    candidates = []
    for length in lengths:
        choice = st.one_of(st.just(0), st.just(1), st.just(int(length)), st.integers(0, int(length)))
        candidates.append(min(draw(choice), int(length)))
    shape = (batch, seq_len, heads)
    q = rng.normal(size=shape + (head_dim,))
    k = rng.normal(size=shape + (head_dim,))
    v = rng.normal(size=shape + (value_dim,))
    arguments = dict(lengths=lengths.astype(np.int32), num_candidates=np.array(candidates, np.int32))
    if draw(st.booleans()):
        arguments["positions"] = rng.integers(0, 2 * seq_len, size=(batch, seq_len)).astype(np.int32)
    if draw(st.booleans()):
        arguments["alibi_slopes"] = rng.uniform(0.05, 1.0, size=heads)
    if draw(st.booleans()):
        arguments["timestamps"] = -np.cumsum(rng.exponential(300.0, size=(batch, seq_len)), axis=1)
        if draw(st.booleans()):
            arguments["time_slopes"] = rng.uniform(0.05, 1.0, size=heads)
    arguments["kind"] = draw(st.sampled_from(["softmax", "silu"]))
    if draw(st.booleans()):
        arguments["scale"] = draw(st.floats(0.05, 2.0))
    cotangent = rng.normal(size=shape + (value_dim,))
    return q, k, v, arguments, cotangent


def reference(q, k, v, arguments):
    """`attention(impl="xla")` on f32 copies of the float64 problem."""
    as_jax = {name: (jnp.asarray(value, jnp.int32) if np.issubdtype(np.asarray(value).dtype, np.integer)
                     else jnp.asarray(value, jnp.float32)) if isinstance(value, np.ndarray) else value
              for name, value in arguments.items()}
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    return lambda q, k, v: attention(q, k, v, **as_jax, impl="xla"), (f32(q), f32(k), f32(v))


def oracle(q, k, v, arguments):
    names = ("lengths", "num_candidates", "positions", "timestamps", "alibi_slopes",
             "time_slopes", "kind", "scale")
    return oracle_attention(q, k, v, **{n: arguments[n] for n in names if n in arguments})


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@settings(max_examples=30, **SETTINGS)
@given(problems(seq_lens=(1, 2, 3, 7, 15, 16, 17)))
def test_reference_forward_matches_oracle(problem):
    q, k, v, arguments, _ = problem
    function, inputs = reference(q, k, v, arguments)
    got = np.asarray(function(*inputs), np.float64)
    want = oracle(q, k, v, arguments)
    scale = max(1.0, np.abs(want).max())
    np.testing.assert_allclose(got, want, atol=2e-5 * scale, rtol=1e-5)


@settings(max_examples=15, **SETTINGS)
@given(problems(seq_lens=(1, 2, 4, 6), head_dims=(1, 2, 3)))
def test_reference_gradients_match_finite_differences(problem):
    q, k, v, arguments, cotangent = problem
    function, inputs = reference(q, k, v, arguments)
    _, vjp = jax.vjp(function, *inputs)
    grads = vjp(jnp.asarray(cotangent, jnp.float32))
    loss = lambda q, k, v: float(np.sum(cotangent * oracle(q, k, v, arguments)))
    step = 1e-6
    for which, (name, grad) in enumerate(zip(("dq", "dk", "dv"), grads)):
        base = [q, k, v]
        want = np.zeros(base[which].shape)
        for index in np.ndindex(*want.shape):
            plus, minus = [x.copy() for x in base], [x.copy() for x in base]
            plus[which][index] += step
            minus[which][index] -= step
            want[index] = (loss(*plus) - loss(*minus)) / (2 * step)
        got = np.asarray(grad, np.float64)
        scale = max(1.0, np.abs(want).max())
        np.testing.assert_allclose(got, want, atol=1e-4 * scale, rtol=1e-4, err_msg=name)
