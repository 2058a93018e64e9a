"""`genrank-jax lis`: the LIS table of leak kinds x horizons (+ AIS of given features) for a dataset.

Writes <out>/lis.md (the table), <out>/lis.json (rows + run metadata) and <out>/lis.png (deltas
with 95% intervals), and prints the table. Each feature's LIS / AIS is its delta against a placebo
probe (a random feature of its shape), with the raw delta against the no-feature baseline beside it;
`--no-placebo` skips the placebo probes and reports the raw delta alone. A last row, `features`
(kind reference), is the production features baseline fitted on the same rows: not an LIS, it shows
whether the probes are competent rankers; `--no-reference` leaves it out.

--cutoff and --eval-end take a time in one of three forms:
  a quantile of the log's times, strictly between 0 and 1   (--cutoff 0.8)
  an ISO date or date-time, UTC unless a zone is given      (--cutoff 1998-03-01)
  Unix seconds, any other number                            (--cutoff 888000000)
"2.0" is therefore two seconds after 1970: a cutoff outside the log is an error naming the log's dates.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
from tqdm import tqdm

from genrank_jax.cli.command_line import (
    CommandLineParser,
    add_debug_flags,
    add_dry_run_flag,
    positive_int,
    run_reporting_errors,
    user_command,
)
from genrank_jax.leakage import leaks as leak_builders
from genrank_jax.leakage.devices import use_every_cpu_core
from genrank_jax.leakage.impact import leakage_impact
from genrank_jax.leakage.log import InteractionLog
from genrank_jax.leakage.probe import ProbeConfig
from genrank_jax.leakage.reference import NAME as REFERENCE
from genrank_jax.leakage.times import format_time, parse_cutoff, parse_duration, parse_time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="synthetic:tests",
                        help="dataset source for genrank_jax.data.sources.load_dataset (default synthetic:tests)")
    parser.add_argument("--data-dir", default=None, help="folder with the raw files of a real dataset")
    parser.add_argument("--schema", default=None,
                        help="schema file of a --data log:PATH source (docs/guides/own-log.md)")
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
                        help="representation features (AIS): [num_items, d] or [N, d] arrays in .npy files, or "
                             "NAME=side:COLUMN[+COLUMN...], the one-hot codes of the data's own item side features "
                             "(MovieLens: genre_set, year_bucket)")
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
    parser.add_argument("--no-reference", action="store_true",
                        help="leave out the `features` reference row (the production features baseline: a logistic "
                             "regression on point-in-time aggregates fitted on the same rows; it takes seconds)")
    parser.add_argument("--out", default=None, help="output folder (refused if it holds files, unless --overwrite); "
                                                    "default: the next free runs/lis-N")
    parser.add_argument("--overwrite", action="store_true", help="replace the report another run left in --out")
    parser.add_argument("--no-progress", action="store_true")
    add_dry_run_flag(parser)


def _probe_config(args) -> ProbeConfig:
    overrides = {name: getattr(args, name) for name in ("epochs", "batch_size", "dim") if getattr(args, name)}
    return ProbeConfig(model=args.probe_model, table_optimizer=args.table_optimizer, **overrides)


SIDE = "side:"


def _load_features(specs: list[str]) -> dict[str, np.ndarray | tuple[str, ...]]:
    """NAME -> the .npy array, or the side-feature columns of a NAME=side:A+B entry (resolved by
    `_side_features` once the data is loaded)."""
    features = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--features takes NAME=PATH.npy or NAME=side:COLUMN, got {spec!r}")
        if name in features:
            raise ValueError(f"--features names {name!r} twice")
        if path.startswith(SIDE):
            columns = tuple(c.strip() for c in path[len(SIDE):].split("+"))
            if not all(columns):
                raise ValueError(f"--features {name}: {path!r} names no side feature (side:COLUMN[+COLUMN...])")
            features[name] = columns
            continue
        try:
            values = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise FileNotFoundError(f"--features {name}: {path} does not exist") from None
        except (ValueError, OSError) as error:  # text, pickled objects, a truncated file
            raise ValueError(f"--features {name}: {path} is not a numeric .npy array "
                             f"({' '.join(str(error).split())[:160]})") from None
        if not isinstance(values, np.ndarray) or values.dtype.kind not in "biuf":
            kind = type(values).__name__ if not isinstance(values, np.ndarray) else f"dtype {values.dtype}"
            raise ValueError(f"--features {name}: {path} holds {kind}, not numbers")
        features[name] = values
    return features


def _out_folder(args, created) -> pathlib.Path:
    """--out, or the next free runs/lis-N (reserved now, unless --dry-run); printed first."""
    from genrank_jax.cli import output_folder

    if args.out is not None:
        out = pathlib.Path(args.out)
        print(f"report folder: {out}")
        return out
    out = (output_folder.next_run("lis") if args.dry_run
           else output_folder.reserve_run("lis", created))
    print(f"report folder: {out} ({output_folder.default_out_note('lis')})")
    args.out = str(out)
    return out


def run(args) -> int:
    from genrank_jax.cli.output_folder import CreatedFolders, holds_files, removed_unless_saved

    created = CreatedFolders()
    out = _out_folder(args, created)
    # a run that fails before its report is written leaves no folder behind that it created
    with removed_unless_saved(created, lambda: holds_files(out)):
        return _run(args)


def _run(args) -> int:
    import os
    import time

    from genrank_jax.data.sources import data_report, load_dataset

    started, load_start = time.perf_counter(), _load_average()

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
    if REFERENCE in given_features and not args.no_reference:
        raise ValueError(f"feature name {REFERENCE!r} is the reference row's; name the --features entry otherwise "
                         "(or pass --no-reference)")
    if args.dry_run:
        return _dry_run(args, kinds, horizons, given_features)
    if not args.sequential:
        use_every_cpu_core()  # the bank runs a slice of its probes per core (see leakage/devices.py)
    dataset = load_dataset(args.data, data_dir=args.data_dir, schema=args.schema, skip_bad_rows=args.skip_bad_rows,
                           drop_duplicates=args.drop_duplicates)
    for line in data_report(dataset):
        print(line)
    log, cutoff, eval_end, given_features = _checked_against_data(args, dataset, given_features)
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
                                bound=args.bound, placebo=not args.no_placebo, reference=not args.no_reference,
                                progress=progress)
    from genrank_jax.cli.commands import machine

    # the command as typed (no absolute paths of this machine), and what ran it
    metadata = {**report.metadata, "data": args.data, "horizons": horizons,
                "command": user_command(["genrank-jax", "lis", *getattr(args, "argv", [])]), **machine(),
                "seconds_total": time.perf_counter() - started, "load_average": [load_start, _load_average()],
                "cpu_cores": os.cpu_count()}
    print(report.to_markdown())  # first: the table is on screen whatever happens to the files
    out = _write_report(report, metadata, args)
    print(f"wrote {out / 'lis.md'}, {out / 'lis.json'}, {out / 'lis.png'} "
          f"({report.metadata['seconds']:.1f} s of probes)")
    return 0


def _load_average() -> float | None:
    """The 1-minute load average (other jobs on the machine stretch the wall times), if known."""
    import os

    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _checked_against_data(args, dataset, given_features: dict):
    """(InteractionLog, cutoff, eval_end, features) of the data: the task, the times and the
    features that need the data (side:), checked."""
    log = InteractionLog.from_dataset(dataset, task=args.task)
    cutoff = parse_cutoff(args.cutoff, log.timestamp)
    eval_end = None
    if args.eval_end:
        eval_end = parse_time(args.eval_end, log.timestamp)
        if not eval_end > cutoff:
            raise ValueError(f"--eval-end {args.eval_end} is read as {format_time(eval_end)}, not after --cutoff "
                             f"{args.cutoff} ({format_time(cutoff)})")
    features = {name: _side_features(dataset, name, value) if isinstance(value, tuple) else value
                for name, value in given_features.items()}
    return log, cutoff, eval_end, features


def _side_features(dataset, name: str, columns: tuple[str, ...]) -> np.ndarray:
    """[num_items, sum of vocabularies] float32: the one-hot codes of the item side-feature `columns`."""
    names = list(dataset.info.get("side_feature_names", ()))
    missing = [c for c in columns if c not in names]
    if missing:
        have = ", ".join(names) if names else "none"
        raise ValueError(f"--features {name}: {args_text(columns)} names side features the data does not have "
                         f"({', '.join(missing)}); {dataset.name} has: {have}")
    side, sizes = dataset.catalog.side_features, dataset.spec.side_vocab_sizes
    blocks = [np.eye(sizes[names.index(c)], dtype=np.float32)[side[:, names.index(c)]] for c in columns]
    return np.concatenate(blocks, axis=1)


def args_text(columns: tuple[str, ...]) -> str:
    return SIDE + "+".join(columns)


def _dry_run(args, kinds: list[str], horizons: list[str], given_features: dict) -> int:
    """`genrank-jax lis --dry-run`: the data previewed (nothing prepared), the task, the times and
    the features checked against it when it loads without writing; what would be trained."""
    from genrank_jax.cli.dry_run import NOTHING_WRITTEN
    from genrank_jax.data.preview import preview_source
    from genrank_jax.data.sources import data_report

    preview = preview_source(args.data, data_dir=args.data_dir, schema=args.schema, skip_bad_rows=args.skip_bad_rows,
                             drop_duplicates=args.drop_duplicates)
    for line in preview.lines:
        print(line)
    config = _probe_config(args)
    leaks = [f"{kind}@{horizon}" for horizon in horizons for kind in kinds]
    features = len(leaks) + len(given_features)
    print(f"probes: {features + 1} x {args.seeds} seeds ({len(leaks)} leaks: {', '.join(leaks) or 'none'}; "
          f"{len(given_features)} features: {', '.join(given_features) or 'none'}; and the baseline)"
          + ("" if args.no_placebo else ", plus one placebo per distinct feature shape and seed")
          + ("" if args.no_reference else f"; and the {REFERENCE!r} reference row (one logistic regression "
                                          "on point-in-time aggregates, seconds)")
          + f"; {config.model} probes, {config.epochs} epochs, "
          + ("one at a time" if args.sequential else "trained together"))
    if preview.dataset is not None:
        for line in data_report(preview.dataset):
            print(line)
        log, cutoff, eval_end, _ = _checked_against_data(args, preview.dataset, given_features)
        train_rows = int((log.timestamp < cutoff).sum())
        print(f"task: {', '.join(log.task_names)}; cutoff {format_time(cutoff)}: {train_rows:,} train rows, "
              f"{log.num_rows - train_rows:,} after it"
              + (f" (evaluated up to {format_time(eval_end)})" if eval_end else ""))
    else:
        print("the task, --cutoff and side: features are checked against the data once it is prepared (the first "
              "run prepares it)")
    out = pathlib.Path(args.out)
    probes = (features + 1) * args.seeds + (0 if args.no_placebo else features * args.seeds)  # placebos: at most
    train_rows = train_rows if preview.dataset is not None else None
    print(f"expected time: {lis_expected_time(config, probes, train_rows, sequential=args.sequential)}")
    print(f"would write: {out / 'lis.md'}, {out / 'lis.json'}, {out / 'lis.png'}")
    print(NOTHING_WRITTEN)
    return 0


MEASURED_LIS = "71 to 92 s for the README's 128 probes on MovieLens-100K on a 2-core CPU"
# The README's `genrank-jax lis` run (bench/results/lis_movielens.json): 128 probes (mlp, dim 16,
# 2 epochs) trained together on 79,999 train rows in 81 s on a 2-core CPU (load average 6 to 8).
MEASURED_LIS_RUN = dict(model="mlp", dim=16, epochs=2, probes=128, train_rows=79_999, seconds=81.2, cores=2)


def lis_expected_time(config, probes: int, train_rows: int | None, *, sequential: bool = False) -> str:
    """'about N s ...' scaled from the measured run (probes x train rows x epochs), or why not."""
    import jax

    from genrank_jax.cli.dry_run import _duration, cores

    run = MEASURED_LIS_RUN
    if train_rows is None:
        return f"not known before the data is prepared (for scale: {MEASURED_LIS})"
    if (config.model, config.dim, jax.default_backend(), sequential) != (run["model"], run["dim"], "cpu", False):
        return (f"not measured for {config.model} probes of dim {config.dim} "
                f"{'one at a time ' if sequential else ''}on {jax.default_backend()} (for scale: {MEASURED_LIS})")
    # the work grows with probes x rows x epochs; fixed costs (data, compiling) make small runs slower than this
    scale = (probes / run["probes"]) * (train_rows / run["train_rows"]) * (config.epochs / run["epochs"])
    seconds = run["seconds"] * scale
    here = "" if cores() == run["cores"] else f"; this machine has {cores()} cores"
    return (f"about {_duration(seconds)} for at most {probes} probes on {train_rows:,} train rows "
            f"({config.epochs} epochs), scaled from the README's run ({run['probes']} probes, {run['train_rows']:,} "
            f"rows, {run['epochs']} epochs in {run['seconds']:.0f} s on a {run['cores']}-core CPU){here}")


def _write_report(report, metadata: dict, args) -> pathlib.Path:
    """lis.md/json/png into --out, whole; if that fails, into a fresh temporary folder, named in
    the error: probes that took minutes are never lost to a full disk or a vanished folder."""
    import tempfile

    from genrank_jax.cli.output_folder import written_whole
    from genrank_jax.errors import GenRankError

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
        raise GenRankError(f"could not write the report to {args.out} ({reason}); "
                           f"saved in {fallback}: {kept}") from None


def _check_before_work(args, kinds: list[str], horizons: list[str]) -> None:
    """Every option that can be checked before the probes train (they take minutes)."""
    from genrank_jax.cli.output_folder import check_free

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
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in lis.json
    return run_reporting_errors("genrank-jax lis", lambda: run(args), debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
