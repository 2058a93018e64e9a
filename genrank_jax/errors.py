"""The library's error base: a problem with the user's input, files or settings, said in one message.

A `GenRankError` may carry a hint saying how to get past it; the hint names an option the way the
caller writes it: a Python keyword (`skip_bad_rows=True`) in `str(error)`, a command-line flag
(`--skip-bad-rows`) in `error.command_line_message()`, which the CLI prints.

Errors the CLI reports as one line (exit code 2) are those `is_user_error` accepts: a
`GenRankError`, an OSError (a file), or one of the built-in kinds the library raises for bad input
(ValueError for a bad value, ArithmeticError, RuntimeError for a checkpoint that cannot be used,
NotImplementedError for a backend that cannot run here) *raised by the library's own code*. The
same kinds raised inside jax, numpy or another dependency are defects (exit 1): a bug in how the
library calls them is not something the user can fix by changing their input.

`GenrankError` is the base class's old spelling: still importable from here and from `genrank_jax`
(it warns, and is the same class, so `except GenrankError` still catches).
"""

from __future__ import annotations

import warnings


class GenRankError(Exception):
    """A problem the user can fix; `hint` (Python) and `cli_hint` (command line) say how."""

    def __init__(self, message: str, *, hint: str = "", cli_hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.cli_hint = hint if cli_hint is None else cli_hint

    @staticmethod
    def _join(message: str, hint: str) -> str:
        return f"{message} ({hint})" if hint else message

    def __str__(self) -> str:
        return self._join(self.message, self.hint)

    def command_line_message(self) -> str:
        return self._join(self.message, self.cli_hint)


USER_ERRORS: tuple[type[BaseException], ...] = (
    GenRankError, ValueError, OSError, ArithmeticError, RuntimeError, NotImplementedError)
_OWN_CODE_ONLY = (ValueError, ArithmeticError, RuntimeError, NotImplementedError)


def raised_by_library(error: BaseException) -> bool:
    """Whether the innermost frame that raised `error` is genrank_jax's own code (its kernels and
    leakage packages included), not a dependency's."""
    traceback, module = error.__traceback__, None
    while traceback is not None:
        module = traceback.tb_frame.f_globals.get("__name__", "")
        traceback = traceback.tb_next
    return module is not None and (module == "genrank_jax" or module.startswith("genrank_jax."))


def is_user_error(error: BaseException) -> bool:
    """A problem with the user's input, files or settings (see the module docstring), not a defect."""
    if isinstance(error, (GenRankError, OSError)):
        return True
    return isinstance(error, _OWN_CODE_ONLY) and raised_by_library(error)


def __getattr__(name: str):
    # the old spelling, resolved on access so that using it (not importing this module) warns
    if name == "GenrankError":
        warnings.warn("GenrankError is now GenRankError (genrank_jax.errors.GenRankError)", DeprecationWarning,
                      stacklevel=2)
        return GenRankError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
