"""How every `genrank-jax` subcommand reports a problem: one line, `genrank-jax <command>: <message>`.

- `CommandLineParser`: argparse whose usage errors are that one line too (exit code 2);
  `parse_arguments` has an unknown option reported by the subcommand it was given to.
- `run_reporting_errors`: runs a subcommand; a library error (`genrank_jax.errors.is_user_error`)
  becomes the line and exit code 2; anything else is a defect: the line names its type and exit
  code is 1. `--debug` (added to every subcommand by `add_debug_flags`) re-raises instead, so the
  traceback shows.
- Option types that validate numbers (`positive_int`, `non_negative_int`, `positive_float`,
  `non_negative_float`, `fraction`).
- `user_command`: the command line as a user would type it, for reports (no absolute paths of the
  machine that ran it).
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import shlex
import sys
from collections.abc import Callable

from genrank_jax.errors import is_user_error

USAGE_ERROR = 2
DEFECT = 1


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def error_message(error: BaseException) -> str:
    """The error as the command line says it: its CLI hint when it has one, never a traceback."""
    if hasattr(error, "command_line_message"):
        text = error.command_line_message()
    elif isinstance(error, KeyError) and error.args:
        text = str(error.args[0])  # str(KeyError) wraps the message in quotes
    else:
        text = str(error)
    return one_line(text) or type(error).__name__


class CommandLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, `<prog>: <message>`, exit code 2."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"{self.prog}: {one_line(message)} (see {self.prog} --help)\n")


def add_debug_flags(parser: argparse.ArgumentParser) -> None:
    """`--debug` on the parser and each of its subcommands (however they were added)."""
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if not any("--debug" in a.option_strings for a in sub._actions):
                    # SUPPRESS: a subcommand's default must not undo `genrank-jax --debug <command>`
                    sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                     help="show the traceback of an error")


def add_dry_run_flag(parser: argparse.ArgumentParser) -> None:
    """`--dry-run`: check everything the command would use, say what it would do, write nothing."""
    parser.add_argument("--dry-run", action="store_true",
                        help="check every option, the data, the output folder and any checkpoint, print what the "
                             "run would do, and stop without writing anything (exit 0, or 2 with the error the run "
                             "would give)")


def parse_arguments(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """parser.parse_args, except that an unknown option is reported by the subcommand it was given to.

    (argparse leaves unknown options to the top parser, whose message would not name the command.)
    """
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        command = getattr(args, subcommands[0].dest, None) if subcommands else None
        owner = subcommands[0].choices[command] if command else parser
        owner.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def run_reporting_errors(prog: str, command: Callable[[], int], *, debug: bool = False) -> int:
    """command()'s exit code; an error becomes one line on stderr (see the module docstring)."""
    try:
        return command()
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - this is the one place that turns errors into exit codes
        if debug:
            raise
        if is_user_error(error):
            print(f"{prog}: {error_message(error)}", file=sys.stderr)
            return USAGE_ERROR
        print(f"{prog}: internal error {type(error).__name__}: {error_message(error)} "
              "(a defect: rerun with --debug for the traceback and report it)", file=sys.stderr)
        return DEFECT


def _number(kind: type, text: str, *, minimum: float, inclusive: bool, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(int, text, minimum=0, inclusive=False, what="a positive integer")


def non_negative_int(text: str) -> int:
    return _number(int, text, minimum=0, inclusive=True, what="an integer >= 0")


def positive_float(text: str) -> float:
    return _number(float, text, minimum=0.0, inclusive=False, what="a positive number")


def non_negative_float(text: str) -> float:
    return _number(float, text, minimum=0.0, inclusive=True, what="a number >= 0")


def fraction(text: str) -> float:
    """A number in [0, 1) (a share of the data: 0 is none, 1 would leave nothing else)."""
    value = _number(float, text, minimum=0.0, inclusive=True, what="a fraction in [0, 1)")
    if value >= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def user_path(text: str, *, cwd: str | os.PathLike | None = None, home: str | os.PathLike | None = None,
              tilde: bool = True) -> str:
    """An absolute path as a user would type it: relative to `cwd` (the folder the command ran in)
    when inside it, else `~/...` under the home folder (`tilde`), else relative to `cwd`. Anything
    that is not an absolute path is returned unchanged."""
    if not text.startswith("/"):
        return text
    path = pathlib.PurePath(os.path.normpath(text))
    home = pathlib.PurePath(home if home is not None else os.path.expanduser("~"))
    cwd = pathlib.PurePath(cwd if cwd is not None else os.getcwd())
    if path == cwd or cwd in path.parents:
        return os.path.relpath(path, cwd)
    if tilde and str(home) != "/" and (path == home or home in path.parents):
        return "~" if path == home else f"~/{path.relative_to(home)}"
    return os.path.relpath(path, cwd)


def _quoted(word: str) -> str:
    """shlex.quote, leaving a leading `~/` outside the quotes (so the shell still expands it)."""
    if word == "~" or word.startswith("~/"):
        rest = word[2:]
        return "~/" + (shlex.quote(rest) if rest else "") if word != "~" else "~"
    return shlex.quote(word)


def user_command(words: list[str], *, cwd=None, home=None) -> str:
    """`words` (a program, its subcommand and arguments) joined as a shell line, with every
    absolute path, alone or after `=` (`--out=/x`, `name=/x.npy`) or `log:`, written by `user_path`.
    A path after `=` keeps `~` only where the shell expands it (after a NAME=, not after --out=)."""
    import re

    shown = []
    for word in words:
        if word.startswith("log:/"):  # --data log:PATH
            shown.append("log:" + _quoted(user_path(word[4:], cwd=cwd, home=home, tilde=False)))
            continue
        head, sep, tail = word.partition("=")
        if sep and tail.startswith("/") and not word.startswith("/"):
            tilde = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", head) is not None
            path = user_path(tail, cwd=cwd, home=home, tilde=tilde)
            shown.append(shlex.quote(head + sep) + _quoted(path) if path.startswith("~")
                         else shlex.quote(head + sep + path))
        else:
            shown.append(_quoted(user_path(word, cwd=cwd, home=home)))
    return " ".join(shown)
