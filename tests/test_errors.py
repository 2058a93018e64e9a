"""Which errors are the user's to fix (one line, exit 2) and which are defects (exit 1)."""

import numpy as np
import pytest

import genrank_jax
from genrank_jax.cli.command_line import run_reporting_errors
from genrank_jax.errors import GenRankError, is_user_error
from genrank_jax.model.validation import BatchError
from genrank_jax.training import NonFiniteLossError, TrainConfig


def raised(call):
    try:
        call()
    except BaseException as error:  # noqa: BLE001 - the test inspects what was raised
        return error
    raise AssertionError("nothing was raised")


def test_the_librarys_own_value_errors_are_the_users():
    error = raised(lambda: TrainConfig(steps=0))  # raised in genrank_jax.training
    assert isinstance(error, ValueError) and is_user_error(error)


def test_the_same_kinds_raised_inside_a_dependency_are_defects():
    error = raised(lambda: np.zeros(3).reshape(2, 2))  # a ValueError from numpy
    assert isinstance(error, ValueError) and not is_user_error(error)
    assert not is_user_error(raised(lambda: {}["missing"]))  # a KeyError anywhere


def test_files_and_genrank_errors_are_always_the_users():
    assert is_user_error(raised(lambda: open("/nonexistent/genrank-jax")))
    assert is_user_error(GenRankError("bad input"))


def test_the_cli_exit_codes(capsys):
    assert run_reporting_errors("genrank-jax test", lambda: TrainConfig(steps=0)) == 2
    assert "genrank-jax test: steps and batch_size must be positive" in capsys.readouterr().err
    assert run_reporting_errors("genrank-jax test", lambda: np.zeros(3).reshape(2, 2)) == 1
    assert "internal error ValueError" in capsys.readouterr().err


@pytest.mark.parametrize("kind", [BatchError, NonFiniteLossError])
def test_every_library_error_is_a_genrank_error(kind):
    assert issubclass(kind, GenRankError)


def test_the_top_level_names_only_the_public_api():
    names = dir(genrank_jax)
    for module in ("config", "typing", "errors", "blocks", "cli", "command_line"):
        assert module not in names, module
    for package in ("data", "kernels", "leakage", "sharding", "model", "training", "serving"):
        assert package in names, package
    for name in ("GenRank", "Trainer", "split_batch", "requests_from", "attention", "simulate", "GenRankError"):
        assert name in names and hasattr(genrank_jax, name), name
