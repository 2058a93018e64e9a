"""The shape annotations at the public boundaries are checked, not decoration: each entry point is
wrapped with jaxtyping's runtime checker (beartype) and called with consistent inputs (the
annotations must accept what the function really takes and returns) and with one inconsistent
dimension (the checker must name the parameter)."""

import jax.numpy as jnp
import numpy as np
import pytest
from beartype import beartype
from flax import nnx
from jaxtyping import TypeCheckError, jaxtyped

from genrank_jax.data.samples import SampleBuilder, SampleLayout
from genrank_jax.data.synthetic import SimulatorConfig, simulate
from genrank_jax.kernels import attention, cached_attention
from genrank_jax.model import GenRank
from genrank_jax.model.config import GenRankConfig
from genrank_jax.training import usable_requests


def checked(function):
    return jaxtyped(typechecker=beartype)(function)


def normal(rng, *shape):
    return jnp.asarray(rng.normal(size=shape), jnp.float32)


def test_the_attention_op_s_annotations_hold():
    rng = np.random.default_rng(0)
    q, k, v = normal(rng, 3, 10, 2, 8), normal(rng, 3, 10, 2, 8), normal(rng, 3, 10, 2, 4)
    counts = dict(lengths=jnp.asarray([10, 6, 0], jnp.int32), num_candidates=jnp.asarray([3, 2, 0], jnp.int32))
    out = checked(attention)(q, k, v, positions=jnp.zeros((3, 10), jnp.int32), timestamps=normal(rng, 3, 10),
                             alibi_slopes=jnp.asarray([0.5, 0.25]), time_slopes=jnp.asarray([0.1, 0.05]), **counts)
    assert out.shape == (3, 10, 2, 4)
    with pytest.raises(TypeCheckError, match="parameter 'v'"):
        checked(attention)(q, k, normal(rng, 3, 9, 2, 4), **counts)  # S differs
    with pytest.raises(TypeCheckError, match="parameter 'alibi_slopes'"):
        checked(attention)(q, k, v, alibi_slopes=jnp.asarray([0.5, 0.25, 0.1]), **counts)  # H differs


def test_the_cached_op_s_annotations_hold():
    rng = np.random.default_rng(1)
    q, k, v = normal(rng, 2, 3, 2, 8), normal(rng, 2, 3, 2, 8), normal(rng, 2, 3, 2, 4)
    cache = dict(cache_keys=normal(rng, 2, 7, 2, 8), cache_values=normal(rng, 2, 7, 2, 4),
                 cache_lengths=jnp.asarray([7, 2], jnp.int32))
    out = checked(cached_attention)(q, k, v, num_candidates=jnp.asarray([3, 1], jnp.int32),
                                    cache_positions=jnp.zeros((2, 7), jnp.int32),
                                    positions=jnp.full((2, 3), 7, jnp.int32), **cache)
    assert out.shape == (2, 3, 2, 4)
    with pytest.raises(TypeCheckError, match="parameter 'cache_values'"):
        checked(cached_attention)(q, k, v, **{**cache, "cache_values": normal(rng, 2, 6, 2, 4)})  # N differs


def test_the_model_s_logits_annotation_holds():
    feed = simulate(SimulatorConfig.preset("tests"))
    builder = SampleBuilder(feed.dataset, SampleLayout(max_history=16))
    requests = usable_requests(builder, feed.dataset.train_requests, 1)[:4]
    batch = builder.build(requests, int(builder.token_counts(requests).max()))
    model = GenRank(GenRankConfig.preset("tiny", feed.dataset.spec), rngs=nnx.Rngs(0))
    logits = checked(GenRank.__call__)(model, batch)
    assert logits.shape == batch.labels.shape
