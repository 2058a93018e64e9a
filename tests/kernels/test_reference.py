"""The jnp reference against a per-pair loop written from DESIGN.md's contract."""

import jax.numpy as jnp
import numpy as np
import pytest

from tests.kernels.parity import Case, make_inputs
from genrank_jax.kernels import attention


def loop_attention(q, k, v, *, lengths, num_candidates, positions, timestamps, alibi_slopes,
                   time_slopes, kind):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    batch, seq_len, heads, dim = q.shape
    out = np.zeros(v.shape)
    for b in range(batch):
        history = lengths[b] - num_candidates[b]
        for h in range(heads):
            for i in range(lengths[b]):
                keys = [j for j in range(lengths[b])
                        if (i < history and j <= i) or (i >= history and (j < history or j == i))]
                logits = np.array([
                    q[b, i, h] @ k[b, j, h] / np.sqrt(dim)
                    - alibi_slopes[h] * abs(positions[b, i] - positions[b, j])
                    - time_slopes[h] * np.log1p(abs(timestamps[b, i] - timestamps[b, j]))
                    for j in keys])
                if kind == "softmax":
                    weights = np.exp(logits - logits.max())
                    weights /= weights.sum()
                else:
                    weights = logits / (1 + np.exp(-logits)) / lengths[b]
                out[b, i, h] = weights @ v[b, keys, h]
    return out


@pytest.mark.parametrize("kind", ["softmax", "silu"])
@pytest.mark.parametrize("seed", [0, 1])
def test_reference_matches_loop(kind, seed):
    case = Case(batch=3, seq_len=9, heads=2, head_dim=4, kind=kind, seed=seed,
                lengths=(9, 5, 0), num_candidates=(3, 5, 0))
    q, k, v, arguments, _ = make_inputs(case)
    got = attention(q, k, v, **arguments, kind=kind, impl="xla")
    numpy_arguments = {name: np.asarray(value) for name, value in arguments.items()}
    want = loop_attention(q, k, v, kind=kind, **numpy_arguments)
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


def test_default_impl_is_the_reference_on_cpu():
    from genrank_jax.kernels import default_impl

    import jax
    if jax.devices()[0].platform == "cpu":
        assert default_impl(jnp.float32) == "xla" and default_impl(jnp.bfloat16) == "xla"
