"""`genrank-jax lis`: the LIS table of leak kinds x horizons (+ AIS of given features) for a dataset.

Writes <out>/lis.md (the table), <out>/lis.json (rows + run metadata) and <out>/lis.png (deltas
with 95% intervals), and prints the table. Each feature's LIS / AIS is its delta against a placebo
probe (a random feature of its shape), with the raw delta against the no-feature baseline beside it;
`--no-placebo` skips the placebo probes and reports the raw delta alone.

--cutoff and --eval-end take a time in one of three forms:
  a quantile of the log's times, strictly between 0 and 1   (--cutoff 0.8)
  an ISO date or date-time, UTC unless a zone is given      (--cutoff 1998-03-01)
  Unix seconds, any other number                            (--cutoff 888000000)
"2.0" is therefore two seconds after 1970: a cutoff outside the log is an error naming the log's dates.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
from tqdm import tqdm

from genrank_jax.leakage import leaks as leak_builders
from genrank_jax.leakage.devices import use_every_cpu_core
from genrank_jax.leakage.impact import leakage_impact
from genrank_jax.leakage.log import InteractionLog
from genrank_jax.leakage.probe import ProbeConfig
from genrank_jax.command_line import (CommandLineParser, add_debug_flags, positive_int, run_reporting_errors)
from genrank_jax.leakage.times import format_time, parse_cutoff, parse_duration, parse_time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="synthetic:tests",
                        help="dataset source for genrank_jax.data.sources.load_dataset (default synthetic:tests)")
    parser.add_argument("--data-dir", default=None, help="folder with the raw files of a real dataset")
    parser.add_argument("--schema", default=None, help="schema file of a --data log:PATH source (README, 'Your own log')")
    parser.add_argument("--skip-bad-rows", action="store_true",
                        help="skip (and count) malformed rows of the raw files instead of stopping at the first")
    parser.add_argument("--drop-duplicates", action="store_true",
                        help="drop exact duplicate rows of the raw log (default: keep them; both report the count)")
    parser.add_argument("--task", default=None, help="action to score (name); default: all, AUC averaged")
    parser.add_argument("--cutoff", default="0.8",
                        help="train before this time, inside the log: a quantile of the log's times in (0, 1) "
                             "(0.8), an ISO date (1998-03-01, UTC) or Unix seconds (888000000)")
    parser.add_argument("--eval-end", default=None,
                        help="evaluate up to this time, after --cutoff (same forms); default: the log's end")
    parser.add_argument("--horizon", default="7d,30d", help="comma-separated leak horizons (7d, 12h, seconds)")
    parser.add_argument("--leaks", default=",".join(leak_builders.BUILDERS),
                        help=f"comma-separated leak kinds among {', '.join(leak_builders.BUILDERS)} (empty: none)")
    parser.add_argument("--features", nargs="*", default=[], metavar="NAME=PATH.npy",
                        help="representation features (AIS): [num_items, d] or [N, d] arrays in .npy files")
    parser.add_argument("--bound", default=None, help="leak row that AIS is divided by (default: largest LIS)")
    parser.add_argument("--seeds", type=positive_int, default=8)
    parser.add_argument("--epochs", type=positive_int, default=None)
    parser.add_argument("--batch-size", type=positive_int, default=None)
    parser.add_argument("--dim", type=positive_int, default=None, help="probe embedding width (and type A width)")
    parser.add_argument("--probe-model", choices=("mlp", "genrank"), default="mlp",
                        help="probe ranker: the MLP probe (default) or a tiny GenRank")
    parser.add_argument("--table-optimizer", choices=("auto", "adam", "rowwise_adagrad"), default="auto",
                        help="how the probes' embedding tables learn: Adam, or row-wise Adagrad (a third of the "
                             "memory); auto (default): Adam up to 64 MiB of tables a probe, row-wise Adagrad above")
    parser.add_argument("--sequential", action="store_true", help="train probes one at a time (parallel=False)")
    parser.add_argument("--no-placebo", action="store_true",
                        help="no placebo probes: LIS / AIS against the no-feature baseline only (fewer probes)")
    parser.add_argument("--out", default="lis_out", help="output folder (refused if it holds files, unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace the report another run left in --out")
    parser.add_argument("--no-progress", action="store_true")


def _probe_config(args) -> ProbeConfig:
    overrides = {name: getattr(args, name) for name in ("epochs", "batch_size", "dim") if getattr(args, name)}
    return ProbeConfig(model=args.probe_model, table_optimizer=args.table_optimizer, **overrides)


def _load_features(specs: list[str]) -> dict[str, np.ndarray]:
    features = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--features takes NAME=PATH.npy, got {spec!r}")
        try:
            values = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise FileNotFoundError(f"--features {name}: {path} does not exist") from None
        except (ValueError, OSError) as error:  # text, pickled objects, a truncated file
            raise ValueError(f"--features {name}: {path} is not a numeric .npy array ({' '.join(str(error).split())[:160]})") from None
        if not isinstance(values, np.ndarray) or values.dtype.kind not in "biuf":
            kind = type(values).__name__ if not isinstance(values, np.ndarray) else f"dtype {values.dtype}"
            raise ValueError(f"--features {name}: {path} holds {kind}, not numbers")
        features[name] = values
    return features


def run(args) -> int:
    from genrank_jax.data.sources import data_report, load_dataset

    horizons = [h.strip() for h in args.horizon.split(",") if h.strip()]
    for horizon in horizons:
        parse_duration(horizon)  # a bad horizon is an error now, not after the data is loaded
    kinds = [k.strip() for k in args.leaks.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in leak_builders.BUILDERS]
    if unknown:
        raise ValueError(f"unknown leak kinds {unknown}; choose among {list(leak_builders.BUILDERS)}")
    _check_before_work(args, kinds, horizons)
    given_features = _load_features(args.features)  # a bad file is named before the data loads
    taken = sorted(set(given_features) & {f"{kind}@{horizon}" for horizon in horizons for kind in kinds})
    if taken:
        raise ValueError(f"feature name {taken[0]!r} is taken by a leak; name the --features entry otherwise")
    if not args.sequential:
        use_every_cpu_core()  # the bank runs a slice of its probes per core (see leakage/devices.py)
    dataset = load_dataset(args.data, data_dir=args.data_dir, schema=args.schema, skip_bad_rows=args.skip_bad_rows,
                           drop_duplicates=args.drop_duplicates)
    for line in data_report(dataset):
        print(line)
    log = InteractionLog.from_dataset(dataset, task=args.task)
    cutoff = parse_cutoff(args.cutoff, log.timestamp)
    eval_end = None
    if args.eval_end:
        eval_end = parse_time(args.eval_end, log.timestamp)
        if not eval_end > cutoff:
            raise ValueError(f"--eval-end {args.eval_end} is read as {format_time(eval_end)}, not after --cutoff "
                             f"{args.cutoff} ({format_time(cutoff)})")
    config = _probe_config(args)
    features, feature_kinds = {}, {}
    quiet = args.no_progress
    with tqdm(total=len(kinds) * len(horizons), desc="leaks", disable=quiet) as bar:
        for horizon in horizons:
            seconds = parse_duration(horizon)
            for kind in kinds:
                name = f"{kind}@{horizon}"
                extra = {"dim": config.dim, "probe": config} if kind == "future_item_embeddings" else {}
                features[name] = leak_builders.BUILDERS[kind](log, cutoff, seconds, **extra)
                feature_kinds[name] = "leak"
                bar.update()
    for name, values in given_features.items():
        features[name] = values
        feature_kinds[name] = "representation"
    with tqdm(total=None, desc="probes (epochs)", disable=quiet) as bar:
        def progress(done, total):
            bar.total = total
            bar.n = done
            bar.refresh()

        report = leakage_impact(log, cutoff=cutoff, eval_end=eval_end, features=features, seeds=args.seeds,
                                probe=config, parallel=not args.sequential, kinds=feature_kinds,
                                bound=args.bound, placebo=not args.no_placebo, progress=progress)
    metadata = {**report.metadata, "data": args.data, "horizons": horizons}
    print(report.to_markdown())  # first: the table is on screen whatever happens to the files
    out = _write_report(report, metadata, args)
    print(f"wrote {out / 'lis.md'}, {out / 'lis.json'}, {out / 'lis.png'} ({report.metadata['seconds']:.1f} s of probes)")
    return 0


def _write_report(report, metadata: dict, args) -> pathlib.Path:
    """lis.md/json/png into --out, whole; if that fails, into a fresh temporary folder, named in
    the error: probes that took minutes are never lost to a full disk or a vanished folder."""
    import tempfile

    from genrank_jax.errors import GenrankError
    from genrank_jax.output_folder import written_whole

    def write(folder: pathlib.Path) -> None:
        (folder / "lis.md").write_text(report.to_markdown())
        (folder / "lis.json").write_text(type(report)(report.rows, metadata).to_json())
        report.plot(folder / "lis.png")

    try:
        with written_whole(args.out, overwrite=args.overwrite) as folder:
            write(folder)
        return pathlib.Path(args.out)
    except Exception as error:  # a full disk, a vanished folder, a plotting failure: keep the numbers
        reason = f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
        fallback = pathlib.Path(tempfile.mkdtemp(prefix="genrank-lis-"))
        try:
            write(fallback)
        except Exception:  # lis.md and lis.json are the report; the picture can be redrawn from them
            pass
        kept = ", ".join(sorted(p.name for p in fallback.iterdir())) or "nothing (the table is printed above)"
        raise GenrankError(f"could not write the report to {args.out} ({reason}); saved in {fallback}: {kept}") from None


def _check_before_work(args, kinds: list[str], horizons: list[str]) -> None:
    """Every option that can be checked before the probes train (they take minutes)."""
    from genrank_jax.output_folder import check_free

    check_free(args.out, overwrite=args.overwrite)
    if args.bound is not None:
        names = [f"{kind}@{horizon}" for horizon in horizons for kind in kinds]
        if args.bound not in names:
            raise ValueError(f"--bound {args.bound!r} is not a leak row of this run; choose one of {', '.join(names)}")


def main(argv=None) -> int:
    """`python -m genrank_jax.leakage.cli`: the same as `genrank-jax lis` (errors as one line, exit code 2)."""
    parser = CommandLineParser(prog="genrank-jax lis", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    add_debug_flags(parser)
    args = parser.parse_args(argv)
    return run_reporting_errors("genrank-jax lis", lambda: run(args), debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
