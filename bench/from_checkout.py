"""Run a script, a module or code against this checkout's genrank_jax, without installing it.

    python3 bench/from_checkout.py SCRIPT [ARGS...]
    python3 bench/from_checkout.py -m MODULE [ARGS...]      (e.g. -m pytest tests/kernels)
    python3 bench/from_checkout.py -c CODE [ARGS...]

A GPU machine lent for one call has no network, so `pip install -e .` (build isolation fetches
setuptools) cannot run there. pyproject.toml maps the folders `kernels/` and `leakage/` into
the package as `genrank_jax.kernels` and `genrank_jax.leakage`; this does the same mapping with an
import hook, and puts the checkout first on sys.path, so imports resolve to these files whether
or not the package is also installed.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import pathlib
import runpy
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAPPED_PACKAGES = {"genrank_jax.kernels": ROOT / "kernels", "genrank_jax.leakage": ROOT / "leakage"}


class CheckoutFinder(importlib.abc.MetaPathFinder):
    """Finds the mapped packages in their folders (their submodules then resolve from there)."""

    def find_spec(self, name, path=None, target=None):
        folder = MAPPED_PACKAGES.get(name)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(
            name, folder / "__init__.py", submodule_search_locations=[str(folder)])


def install() -> None:
    """Make `import genrank_jax...` load this checkout (idempotent)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if not any(isinstance(finder, CheckoutFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, CheckoutFinder())


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if argv else 2)
    install()
    if argv[0] == "-m" and len(argv) > 1:
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    elif argv[0] == "-c" and len(argv) > 1:
        sys.argv = ["-c", *argv[2:]]
        exec(compile(argv[1], "<from_checkout -c>", "exec"), {"__name__": "__main__"})
    else:
        script = pathlib.Path(argv[0]).resolve()
        sys.argv = [str(script), *argv[1:]]
        sys.path.insert(0, str(script.parent))  # as `python SCRIPT` does: its folder first
        runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
