"""`ruff check .` over the repository reports nothing (the rules: pyproject.toml, [tool.ruff]).

ruff is in the `test` extra, so CI has it; without it the test skips, except under CI=true, where
it fails (the project's pattern, as for the shared data in tests/conftest.py).
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ruff_check_reports_nothing():
    if importlib.util.find_spec("ruff") is None:
        message = "ruff is not installed (pip install -e '.[test]' installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + ": under CI=true the lint test never skips")
        pytest.skip(message)
    # --no-cache: a test run leaves no .ruff_cache in the checkout
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"ruff check . found problems:\n{done.stdout}{done.stderr}"
