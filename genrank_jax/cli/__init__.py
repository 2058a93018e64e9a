"""The command line, `genrank-jax` (also `python -m genrank_jax`); `main` is the console script.

`commands` (the parser, `train` and `export`, `main`), `command_line` (argument types and the
one-line error report), `dry_run` (`--dry-run`'s checks and estimates), `output_folder` (numbered
run folders, locks, whole-or-nothing writes) and `simulate_command` (`genrank-jax simulate`).
"""

from genrank_jax.cli.command_line import run_reporting_errors, user_command
from genrank_jax.cli.commands import (
    add_data_quality_arguments,
    add_export_arguments,
    add_train_arguments,
    build_parser,
    check_distributed_flags,
    check_train_folder,
    check_train_options,
    checkpoint_steps,
    eval_size_lines,
    format_table,
    join_processes,
    machine,
    main,
    mesh_from_args,
    resolve_defaults,
    run_export,
    run_train,
    train_folder,
    train_saved,
    train_settings,
    version_line,
    written_folder,
)

__all__ = [
    "main", "build_parser", "run_train", "run_export", "machine", "version_line", "written_folder",
    "add_data_quality_arguments", "add_export_arguments", "add_train_arguments", "check_distributed_flags",
    "check_train_folder", "check_train_options", "checkpoint_steps", "eval_size_lines", "format_table",
    "join_processes", "mesh_from_args", "resolve_defaults", "train_folder", "train_saved", "train_settings",
    "run_reporting_errors", "user_command",
]
