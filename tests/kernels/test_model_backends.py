"""GenRank on every attention backend: outputs and parameter gradients agree with impl="xla".

The Pallas backends run in interpret mode on the CPU (CI); the same test runs compiled on a
device with `-m device`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genrank_jax.config import GenRankConfig
from genrank_jax.data.samples import SampleBuilder, SampleLayout
from genrank_jax.data.synthetic import SimulatorConfig, simulate
from genrank_jax.kernels import unavailable_reason
from genrank_jax.losses import candidate_bce
from genrank_jax.model import GenRank
from genrank_jax.training import usable_requests

BACKENDS = ("pallas_triton", "pallas_mosaic_gpu", "pallas_tpu")


@pytest.fixture(scope="module")
def batch_and_spec():
    dataset = simulate(SimulatorConfig.preset("tests", seed=5)).dataset
    builder = SampleBuilder(dataset, SampleLayout(max_history=21))
    requests = usable_requests(builder, dataset.train_requests, 1)[[3, 50, 200]]
    batch = builder.build(requests, int(builder.token_counts(requests).max()) + 2)
    return jax.tree.map(jnp.asarray, batch), dataset.spec


def loss_and_grads(spec, batch, block, impl, interpret):
    config = GenRankConfig.preset("tiny", spec, block=block, num_blocks=2, attention_impl=impl,
                                  attention_interpret=interpret)
    model = GenRank(config, rngs=nnx.Rngs(3))  # same seed: identical parameters on every backend

    def loss_fn(model):
        logits = model(batch)
        return candidate_bce(logits, batch)[0], logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    return np.asarray(logits), jax.tree.map(np.asarray, nnx.state(grads, nnx.Param))


def check_backend(batch_and_spec, impl, block, interpret):
    reason = unavailable_reason(impl, interpret=interpret)
    if reason is not None:
        pytest.skip(reason) if not interpret else pytest.fail(reason)
    batch, spec = batch_and_spec
    want_logits, want_grads = loss_and_grads(spec, batch, block, "xla", False)
    logits, grads = loss_and_grads(spec, batch, block, impl, interpret)
    mask = np.asarray(batch.candidate_mask())
    np.testing.assert_allclose(logits[mask], want_logits[mask], atol=2e-5, rtol=2e-5)
    for (path, got), (_, want) in zip(jax.tree_util.tree_leaves_with_path(grads),
                                      jax.tree_util.tree_leaves_with_path(want_grads)):
        scale = max(1e-3, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, atol=4e-5 * scale, rtol=4e-4,
                                   err_msg=f"{impl} gradient {jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("block", ["transformer", "hstu"])
@pytest.mark.parametrize("impl", BACKENDS)
def test_model_matches_reference_in_interpret_mode(batch_and_spec, impl, block):
    check_backend(batch_and_spec, impl, block, interpret=True)


@pytest.mark.device
@pytest.mark.parametrize("block", ["transformer", "hstu"])
@pytest.mark.parametrize("impl", BACKENDS)
def test_model_matches_reference_on_device(batch_and_spec, impl, block):
    check_backend(batch_and_spec, impl, block, interpret=False)
