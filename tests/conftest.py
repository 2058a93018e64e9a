import os
import pathlib

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


@pytest.fixture
def shared_data():
    return require_shared_data()
