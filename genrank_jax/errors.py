"""The library's error base: a problem with the user's input, files or settings, said in one message.

A `GenrankError` may carry a hint saying how to get past it; the hint names an option the way the
caller writes it: a Python keyword (`skip_bad_rows=True`) in `str(error)`, a command-line flag
(`--skip-bad-rows`) in `error.command_line_message()`, which the CLI prints.

Errors the CLI reports as one line (exit code 2) are `USER_ERRORS`: besides `GenrankError`, the
built-in kinds the library raises for bad input (ValueError for a bad value, OSError for a file,
ArithmeticError for a non-finite loss, RuntimeError for a checkpoint that cannot be used,
NotImplementedError for a backend that cannot run here). Anything else is a defect.
"""

from __future__ import annotations


class GenrankError(Exception):
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
    GenrankError, ValueError, OSError, ArithmeticError, RuntimeError, NotImplementedError)
