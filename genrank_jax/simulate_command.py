"""`genrank-jax simulate`: write the feed simulator's log as Parquet with its schema file.

The log a newcomer can train on with `--data log:PATH` before they have their own (README,
"Your own log"): `<out>/log.parquet`, `<out>/items.parquet`, `<out>/schema.toml`.
"""

from __future__ import annotations

import argparse

from genrank_jax.command_line import non_negative_int
from genrank_jax.output_folder import check_free, written_whole


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="default", help="simulator preset: tests, default, benchmark, catalog")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--out", default="feed", help="folder for log.parquet, items.parquet and schema.toml")
    parser.add_argument("--overwrite", action="store_true", help="replace a log another run wrote into --out")


def run(args) -> int:
    from genrank_jax.data.own_log.writer import write_log
    from genrank_jax.data.synthetic import SimulatorConfig, simulate

    out = check_free(args.out, overwrite=args.overwrite)
    config = SimulatorConfig.preset(args.preset, seed=args.seed)  # a bad preset fails before anything is written
    dataset = simulate(config).dataset
    with written_whole(out, overwrite=args.overwrite) as folder:
        write_log(dataset, folder)
    log = dataset.interactions
    print(f"wrote {log.num_exposures:,} exposures of {dataset.spec.num_users:,} users and {dataset.spec.num_items:,} "
          f"items (simulator preset {args.preset}, seed {args.seed}) to {out / 'log.parquet'}, with "
          f"{out / 'items.parquet'} and {out / 'schema.toml'}")
    return 0
