import atexit
import os
import pathlib
import shutil
import tempfile

import pytest

SHARED_DATA = pathlib.Path(os.environ.get("GENRANK_SHARED_DATA",
                                          pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))


def require_shared_data() -> pathlib.Path:
    """Path of ../shared/data. Absent: the test skips, except under CI=true, where it fails (CI has
    the data, so its absence is a broken checkout, not a reason to test less)."""
    if not SHARED_DATA.is_dir():
        message = f"shared data not found at {SHARED_DATA} (GENRANK_SHARED_DATA names another folder)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + ": under CI=true a test never skips for missing data")
        pytest.skip(message)
    return SHARED_DATA


def _share_compiled_programs() -> None:
    """One persistent XLA compilation cache for the whole session, its subprocesses included.

    Most tests build a model and a jitted step of their own, so jax's in-memory cache (keyed by the
    function object) misses and XLA compiles the same program again: most of a short test's time.
    The persistent cache is keyed by the program itself, so the second test, or subprocess, that
    compiles it loads it instead. Every entry is kept (no minimum compile time or size). Set before
    jax is imported (it reads these at import); a cache the caller set up is used as it is. The
    folder is this session's alone and removed at its end: a test never sees another run's entries.
    """
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    folder = tempfile.mkdtemp(prefix="genrank-jax-tests-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    atexit.register(shutil.rmtree, folder, ignore_errors=True)


_share_compiled_programs()


@pytest.fixture
def shared_data():
    return require_shared_data()


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one worker per core, at most 4. Each worker compiles XLA programs on several
    threads of its own, so past a few workers they only contend for the cores and memory."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cores))
