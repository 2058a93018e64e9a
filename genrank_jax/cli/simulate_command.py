"""`genrank-jax simulate`: write the feed simulator's log as Parquet with its schema file.

The log a newcomer can train on with `--data log:PATH` before they have their own
(docs/guides/own-log.md, "Your own log"): `<out>/log.parquet`, `<out>/items.parquet`, `<out>/schema.toml`.
"""

from __future__ import annotations

import argparse

from genrank_jax.cli.command_line import add_dry_run_flag, non_negative_int
from genrank_jax.cli.output_folder import check_free, written_whole

# `genrank-jax simulate --preset P` end to end on a 2-core CPU (import, simulation, Parquet), seconds
MEASURED_SECONDS = {"tests": 5, "default": 7, "benchmark": 23}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="default", help="simulator preset: tests, default, benchmark, catalog")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--out", default=None, help="folder for log.parquet, items.parquet and schema.toml "
                                                    "(default: the next free runs/simulate-N)")
    parser.add_argument("--overwrite", action="store_true", help="replace a log another run wrote into --out")
    add_dry_run_flag(parser)


def run(args) -> int:
    from genrank_jax.cli.commands import written_folder
    from genrank_jax.cli.output_folder import CreatedFolders, holds_files, removed_unless_saved

    created = CreatedFolders()
    out = written_folder(args, "simulate", created)
    # a run that fails before the log is written leaves no folder behind that it created
    with removed_unless_saved(created, lambda: holds_files(out)):
        return _run(args, out)


def _run(args, out) -> int:
    from genrank_jax.data.own_log.writer import write_log
    from genrank_jax.data.synthetic import SimulatorConfig, simulate

    check_free(out, overwrite=args.overwrite)
    config = SimulatorConfig.preset(args.preset, seed=args.seed)  # a bad preset fails before anything is written
    dataset = simulate(config).dataset
    log = dataset.interactions
    what = (f"{log.num_exposures:,} exposures of {dataset.spec.num_users:,} users and {dataset.spec.num_items:,} items "
            f"(simulator preset {args.preset}, seed {args.seed})")
    if args.dry_run:
        from genrank_jax.cli.dry_run import NOTHING_WRITTEN

        print(f"log: {what}")
        print(f"would write: {out / 'log.parquet'}, {out / 'items.parquet'}, {out / 'schema.toml'}")
        seconds = MEASURED_SECONDS.get(args.preset)
        print(f"expected time: about {seconds} s (measured on a 2-core CPU)" if seconds else
              "expected time: not measured for this preset")
        print(NOTHING_WRITTEN)
        return 0
    with written_whole(out, overwrite=args.overwrite) as folder:
        write_log(dataset, folder)
    print(f"wrote {what} to {out / 'log.parquet'}, with {out / 'items.parquet'} and {out / 'schema.toml'}")
    return 0
