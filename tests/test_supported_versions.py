"""The README and the docs home page state the tested version range, pyproject.toml requires exactly
it, and this leg is in it (the page's table names its Python)."""

from __future__ import annotations

import importlib.metadata
import pathlib
import re
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
README = (ROOT / "README.md").read_text()
HOME = (ROOT / "docs" / "index.md").read_text()  # "Supported versions": the range and the CI legs


def requirement(name: str) -> Requirement:
    (found,) = [Requirement(r) for r in PROJECT["dependencies"] if Requirement(r).name == name]
    return found


def test_pyproject_range_is_the_one_the_readme_states():
    for text in (README, HOME):
        for name in ("jax", "flax"):
            specifier = requirement(name).specifier
            # lower and upper bound both present, and the page states them as pyproject has them
            assert {spec.operator for spec in specifier} == {">=", "<"}, specifier
            low = next(s.version for s in specifier if s.operator == ">=")
            high = next(s.version for s in specifier if s.operator == "<")
            assert f"`{name}>={low},<{high}`" in text, f"the range {name}>={low},<{high} is not stated"
            major, minor = map(int, high.split("."))  # an upper bound at a minor release: "< 0.13"
            assert f"{name} {low} to {major}.{minor - 1}.x" in text
        assert f"`requires-python{PROJECT['requires-python']}`" in text


def test_readme_table_names_this_legs_python():
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert re.search(rf"^\| {re.escape(python)} \| ", HOME, re.MULTILINE), python


def test_installed_versions_are_in_the_range():
    for name in ("jax", "flax"):
        installed = Version(importlib.metadata.version(name))
        assert installed in requirement(name).specifier, (name, installed)
