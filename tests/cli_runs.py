"""Shared by the CLI tests of run folders and dry runs: a tiny, short train and a call that
returns (exit code, stdout, stderr) whether the CLI returns or exits."""

from __future__ import annotations

from genrank_jax.cli import main

# tiny and short: the folders and checks are under test, not the model
FAST = ["--data", "synthetic:tests", "--preset", "tiny", "--steps", "1", "--batch-size", "8", "--max-history", "16",
        "--validation-fraction", "0", "--no-progress"]


def run(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err
