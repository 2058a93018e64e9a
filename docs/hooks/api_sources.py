"""mkdocs hook: the API reference reads the package as pyproject.toml installs it.

pyproject.toml maps the folders `kernels/` and `leakage/` into the package as
`genrank_jax.kernels` and `genrank_jax.leakage` (`package-dir`), which the source tree alone does
not show. mkdocstrings reads the source without importing it (nothing runs, jax is not needed),
so before the build this copies `genrank_jax/`, `kernels/` and `leakage/` into a temporary folder
laid out as the installed package and points the Python handler there. The copy is removed when
the build ends.
"""

from __future__ import annotations

import atexit
import pathlib
import shutil
import tempfile

from mkdocs.plugins import event_priority

ROOT = pathlib.Path(__file__).resolve().parents[2]
MAPPED = {"kernels": ROOT / "kernels", "leakage": ROOT / "leakage"}  # as pyproject's package-dir


@event_priority(100)  # before mkdocstrings reads its handler options
def on_config(config):
    tree = pathlib.Path(tempfile.mkdtemp(prefix="genrank-jax-api-"))
    atexit.register(shutil.rmtree, tree, ignore_errors=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "genrank_jax", tree / "genrank_jax", ignore=skip)
    for name, folder in MAPPED.items():
        shutil.copytree(folder, tree / "genrank_jax" / name, ignore=skip)
    handlers = config.plugins["mkdocstrings"].config.handlers
    handlers.setdefault("python", {})["paths"] = [str(tree)]
    return config
