"""The package layout (docs/design.md, "Layout and import names"): the old flat module paths and the
old error name still import, each with a DeprecationWarning naming the new one, and nothing in the
project itself uses them."""

import ast
import importlib
import pathlib
import re
import subprocess
import sys
import warnings

import pytest

import genrank_jax
from genrank_jax._moved import MOVED
from genrank_jax.errors import GenRankError
from genrank_jax.serving import ServingError

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ["genrank_jax.model", "genrank_jax.training", "genrank_jax.serving", "genrank_jax.cli"]


def _deprecations(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]


@pytest.mark.parametrize("old", sorted(MOVED))
def test_each_old_module_path_warns_and_is_the_new_module(old, monkeypatch):
    new = importlib.import_module(f"genrank_jax.{MOVED[old]}")
    monkeypatch.delitem(sys.modules, f"genrank_jax.{old}", raising=False)  # run the shim again
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shim = importlib.import_module(f"genrank_jax.{old}")
    assert shim is new  # one module under two names: private names and monkeypatches reach the code
    assert _deprecations(caught) == [f"genrank_jax.{old} is now genrank_jax.{MOVED[old]}; import it from there"]
    assert caught[0].filename == __file__  # attributed to the importer, so filters by module see it


def test_old_module_path_as_an_attribute_of_the_package_warns():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = genrank_jax.curves
    assert module is importlib.import_module("genrank_jax.training.curves")
    assert all("genrank_jax.training.curves" in message for message in _deprecations(caught))


@pytest.mark.parametrize("module", [genrank_jax, genrank_jax.errors], ids=["genrank_jax", "genrank_jax.errors"])
def test_old_error_name_warns_and_is_the_same_class(module):
    with pytest.warns(DeprecationWarning, match="GenrankError is now GenRankError"):
        old = module.GenrankError
    assert old is GenRankError
    try:
        raise ServingError("no candidates")
    except old:  # `except GenrankError` in user code still catches the library's errors
        pass


def test_top_level_lists_the_new_error_name_only():
    assert "GenRankError" in genrank_jax.__all__ and "GenrankError" not in genrank_jax.__all__
    with pytest.raises(AttributeError):
        genrank_jax.NoSuchName  # noqa: B018


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_exports_what_its_all_lists(package):
    module = importlib.import_module(package)
    assert module.__doc__ and module.__all__
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, missing


def test_importing_the_library_and_running_the_cli_help_does_not_warn():
    # a fresh interpreter on this checkout (bench/from_checkout.py), so every module imports anew
    code = ("import sys, warnings\n"
            "warnings.simplefilter('always')\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    import genrank_jax, genrank_jax.cli\n"
            "    try:\n"
            "        genrank_jax.cli.main(['--help'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            "ours = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)\n"
            "        and ('genrank_jax' in str(w.message) or 'GenrankError' in str(w.message)\n"
            "             or '/genrank_jax/' in w.filename)]\n"
            "print('DEPRECATIONS', ours)\n")
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "from_checkout.py"), "-c", code],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "DEPRECATIONS []" in result.stdout, result.stdout[-2000:]


def _old_paths_used(text: str) -> list[str]:
    """The old module paths and the old error name that `text` (Python) imports or names."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] == "genrank_jax" and len(parts) > 1 and parts[1] in MOVED:
                found.append(node.module)
            if node.module == "genrank_jax":
                found += [f"genrank_jax.{a.name}" for a in node.names if a.name in MOVED]
            found += [a.name for a in node.names if a.name == "GenrankError"]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[1:2] and a.name.split(".")[1] in MOVED
                      and a.name.startswith("genrank_jax.")]
        elif isinstance(node, ast.Attribute) and node.attr == "GenrankError":
            found.append(node.attr)
    return found


def test_nothing_in_the_project_uses_an_old_path():
    shims = {ROOT / "genrank_jax" / f"{old}.py" for old in MOVED}
    sources = [path for folder in ("genrank_jax", "kernels", "leakage", "bench", "tests")
               for path in (ROOT / folder).rglob("*.py") if path not in shims and path != pathlib.Path(__file__)]
    used = {str(path.relative_to(ROOT)): _old_paths_used(path.read_text()) for path in sources}
    pages = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
    for page in pages:
        blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
        used[str(page.relative_to(ROOT))] = [name for block in blocks for name in _old_paths_used(block)]
    assert not {path: names for path, names in used.items() if names}
