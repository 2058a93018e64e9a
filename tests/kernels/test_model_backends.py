"""GenRank on every attention backend: outputs and parameter gradients agree with impl="xla".

The Pallas backends run in interpret mode on the CPU (CI); the same test runs compiled on a
device with `-m device`: f32 on Triton and TPU, bf16 on Mosaic GPU (it takes 16-bit inputs
only). Matmuls run at HIGHEST precision on both sides, so a GPU's TF32 default cannot fail an
f32 tolerance. The bf16 comparison also runs in interpret mode, which checks its tolerances.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genrank_jax.data.samples import SampleBuilder, SampleLayout
from genrank_jax.data.synthetic import SimulatorConfig, simulate
from genrank_jax.kernels import unavailable_reason
from genrank_jax.model import GenRank
from genrank_jax.model.config import GenRankConfig
from genrank_jax.model.losses import candidate_bce
from genrank_jax.training import usable_requests

BACKENDS = ("pallas_triton", "pallas_mosaic_gpu", "pallas_tpu")
DEVICE_DTYPES = {"pallas_triton": "float32", "pallas_mosaic_gpu": "bfloat16", "pallas_tpu": "float32"}
# (logits atol = rtol, gradient atol relative to the largest gradient, gradient rtol)
TOLERANCES = {"float32": (2e-5, 4e-5, 4e-4), "bfloat16": (3e-2, 3e-2, 6e-2)}


@pytest.fixture(scope="module")
def batch_and_spec():
    dataset = simulate(SimulatorConfig.preset("tests", seed=5)).dataset
    builder = SampleBuilder(dataset, SampleLayout(max_history=21))
    requests = usable_requests(builder, dataset.train_requests, 1)[[3, 50, 200]]
    batch = builder.build(requests, int(builder.token_counts(requests).max()) + 2)
    return jax.tree.map(jnp.asarray, batch), dataset.spec


def loss_and_grads(spec, batch, block, impl, interpret, dtype):
    config = GenRankConfig.preset("tiny", spec, block=block, num_blocks=2, attention_impl=impl,
                                  attention_interpret=interpret, dtype=dtype)
    model = GenRank(config, rngs=nnx.Rngs(3))  # same seed: identical parameters on every backend

    def loss_fn(model):
        logits = model(batch)
        return candidate_bce(logits, batch)[0], logits

    with jax.default_matmul_precision("highest"):
        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    return (np.asarray(logits, np.float32),
            jax.tree.map(lambda g: np.asarray(g, np.float32), nnx.state(grads, nnx.Param)))


def check_backend(batch_and_spec, impl, block, interpret, dtype="float32"):
    reason = unavailable_reason(impl, interpret=interpret)
    if reason is not None:
        pytest.skip(reason) if not interpret else pytest.fail(reason)
    batch, spec = batch_and_spec
    want_logits, want_grads = loss_and_grads(spec, batch, block, "xla", False, dtype)
    logits, grads = loss_and_grads(spec, batch, block, impl, interpret, dtype)
    logits_tol, grad_atol, grad_rtol = TOLERANCES[dtype]
    mask = np.asarray(batch.candidate_mask())
    np.testing.assert_allclose(logits[mask], want_logits[mask], atol=logits_tol, rtol=logits_tol)
    for (path, got), (_, want) in zip(jax.tree_util.tree_leaves_with_path(grads),
                                      jax.tree_util.tree_leaves_with_path(want_grads)):
        scale = max(1e-3, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, atol=grad_atol * scale, rtol=grad_rtol,
                                   err_msg=f"{impl} {dtype} gradient {jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("block", ["transformer", "hstu"])
@pytest.mark.parametrize("impl", BACKENDS)
def test_model_matches_reference_in_interpret_mode(batch_and_spec, impl, block):
    check_backend(batch_and_spec, impl, block, interpret=True)


@pytest.mark.parametrize("block", ["transformer", "hstu"])
def test_model_bf16_matches_reference_in_interpret_mode(batch_and_spec, block):
    """The comparison the device runs on Mosaic GPU, here on its interpret-mode kernels."""
    check_backend(batch_and_spec, "pallas_mosaic_gpu", block, interpret=True, dtype="bfloat16")


@pytest.mark.device
@pytest.mark.parametrize("block", ["transformer", "hstu"])
@pytest.mark.parametrize("impl", BACKENDS)
def test_model_matches_reference_on_device(batch_and_spec, impl, block):
    check_backend(batch_and_spec, impl, block, interpret=False, dtype=DEVICE_DTYPES[impl])
