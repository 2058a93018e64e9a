"""The built wheel holds the one namespace and imports from a clean folder."""

import pathlib
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
                   check=True)
    (path,) = out.glob("genrank_jax-*.whl")
    return path


def test_wheel_maps_folders_into_one_namespace(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("genrank_jax/model/genrank.py", "genrank_jax/kernels/attention.py",
                   "genrank_jax/kernels/reference.py", "genrank_jax/leakage/__init__.py",
                   "genrank_jax/data/builders/movielens.py", "genrank_jax/training/trainer.py",
                   "genrank_jax/serving/history_cache.py", "genrank_jax/cli/commands.py",
                   "genrank_jax/config.py"):  # the last: a shim for a moved module's old path
        assert module in names, module
    assert not any(name.startswith(("kernels/", "leakage/", "tests/", "bench/")) for name in names)
    (entry_points,) = (name for name in names if name.endswith(".dist-info/entry_points.txt"))
    assert "genrank-jax = genrank_jax.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_wheel_imports_outside_the_source_tree(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target),
                    str(wheel)], check=True)
    code = ("import genrank_jax, genrank_jax.kernels, genrank_jax.leakage, genrank_jax.cli;"
            "assert callable(genrank_jax.cli.main);"
            "assert genrank_jax.__file__.startswith(%r), genrank_jax.__file__;"
            "print(genrank_jax.kernels.attention.__module__)") % str(target)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target)},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "genrank_jax.kernels.attention" in result.stdout
