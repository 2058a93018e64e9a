import os
import pathlib

import pytest

SHARED_DATA = pathlib.Path(os.environ.get("GENRANK_SHARED_DATA",
                                          pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def shared_data():
    """Path of ../shared/data; the test skips cleanly when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
