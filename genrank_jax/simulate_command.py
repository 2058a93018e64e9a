"""`genrank-jax simulate`: write the feed simulator's log as Parquet with its schema file.

The log a newcomer can train on with `--data log:PATH` before they have their own (README,
"Your own log"): `<out>/log.parquet`, `<out>/items.parquet`, `<out>/schema.toml`.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import uuid

from genrank_jax.command_line import non_negative_int
from genrank_jax.training import OutputInUseError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="default", help="simulator preset: tests, default, benchmark, catalog")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--out", default="feed", help="folder for log.parquet, items.parquet and schema.toml")
    parser.add_argument("--overwrite", action="store_true", help="replace a log another run wrote into --out")


def run(args) -> int:
    from genrank_jax.data.own_log.writer import write_log
    from genrank_jax.data.synthetic import SimulatorConfig, simulate

    out = pathlib.Path(args.out)
    if out.exists() and not out.is_dir():
        raise OutputInUseError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise OutputInUseError(f"{out} is not empty", cli_hint="replace it with --overwrite or choose another --out")
    config = SimulatorConfig.preset(args.preset, seed=args.seed)  # a bad preset fails before anything is written
    dataset = simulate(config).dataset
    # written beside, renamed into place: a crash leaves no folder that looks finished
    partial = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        write_log(dataset, partial)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            out.rename(old)
            partial.rename(out)
            shutil.rmtree(old)
        else:
            partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    log = dataset.interactions
    print(f"wrote {log.num_exposures:,} exposures of {dataset.spec.num_users:,} users and {dataset.spec.num_items:,} "
          f"items (simulator preset {args.preset}, seed {args.seed}) to {out / 'log.parquet'}, with "
          f"{out / 'items.parquet'} and {out / 'schema.toml'}")
    return 0
