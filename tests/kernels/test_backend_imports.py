"""Every backend module imports on every supported jax, and a missing jax API is reported, not raised.

CI runs this file on each leg of the version matrix (docs/index.md, "Supported versions"): a backend
whose jax lacks something must still import and say why through `unavailable_reason`.
"""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
import textwrap

import jax
import pytest

from genrank_jax.kernels import IMPLEMENTATIONS, unavailable_reason

PALLAS_BACKENDS = IMPLEMENTATIONS[1:]


@pytest.mark.parametrize("impl", PALLAS_BACKENDS)
def test_backend_module_imports_with_its_jax_api(impl):
    module = importlib.import_module(f"genrank_jax.kernels.{impl}")
    # On a supported jax every API the backend uses is present: nothing was swallowed.
    assert module._IMPORT_ERROR is None, module._IMPORT_ERROR
    assert unavailable_reason(impl, interpret=True) is None


def test_hopper_kernels_module_imports():
    from jax.experimental.pallas import mosaic_gpu as plgpu

    from genrank_jax.kernels import _gpu_hopper as hopper

    index = inspect.signature(plgpu.load).parameters.get("idx")
    # jax 0.10 requires the index, 0.11 deprecates it (a default), 0.12 removed it.
    assert hopper._LOAD_TAKES_INDEX == (index is not None and index.default is inspect.Parameter.empty)
    assert hopper._LOAD_TAKES_INDEX == (jax.__version_info__ < (0, 11))


def test_a_missing_jax_api_is_reported_not_raised():
    """A jax whose Mosaic GPU and Pallas TPU APIs moved (simulated: those modules fail to import).

    In a fresh interpreter, so no other test sees the crippled modules.
    """
    script = textwrap.dedent("""
        import sys
        sys.modules["jax.experimental.pallas.mosaic_gpu"] = None  # importing it raises ImportError
        sys.modules["jax.experimental.pallas.tpu"] = None
        from genrank_jax.kernels import attention, unavailable_reason
        for impl in ("pallas_mosaic_gpu", "pallas_tpu"):
            reason = unavailable_reason(impl, interpret=False)
            assert reason is not None and "lacks the" in reason, reason
        assert unavailable_reason("pallas_mosaic_gpu", interpret=True) is None  # blocked kernels
        print("reported")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reported"
