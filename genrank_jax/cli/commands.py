"""Command line: `genrank-jax train` (also `python -m genrank_jax train`), `genrank-jax lis` and
`genrank-jax export` (a trained model's encode/score functions for serving, see genrank_jax/serving/export.py)."""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import sys
import time

import numpy as np

from genrank_jax.cli.command_line import (
    CommandLineParser,
    add_debug_flags,
    add_dry_run_flag,
    fraction,
    non_negative_float,
    non_negative_int,
    parse_arguments,
    positive_float,
    positive_int,
    run_reporting_errors,
    user_command,
)
from genrank_jax.errors import GenRankError
from genrank_jax.model.config import ARCHITECTURES


def add_data_quality_arguments(parser: argparse.ArgumentParser) -> None:
    """What a real dataset's loader does with rows it cannot use (shared by `train` and `lis`)."""
    parser.add_argument("--skip-bad-rows", action="store_true",
                        help="skip (and count) malformed rows of the raw files instead of stopping at the first")
    parser.add_argument("--drop-duplicates", action="store_true",
                        help="drop exact duplicate rows of the raw log (default: keep them; both report the count)")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="synthetic",
                        help="synthetic[:tests|default|feed|benchmark], movielens:100k|1m|20m|32m|latest-small, "
                             "kuairand:pure|1k|27k, "
                             "or log:PATH (your own Parquet/CSV log, with --schema)")
    parser.add_argument("--data-dir", default=None, help="folder with the raw files of a real dataset")
    parser.add_argument("--schema", default=None,
                        help="schema file of a --data log:PATH source (docs/guides/own-log.md)")
    add_data_quality_arguments(parser)
    parser.add_argument("--split", default="temporal", choices=["temporal", "last_request"])
    parser.add_argument("--architecture", default="genrank", choices=list(ARCHITECTURES),
                        help="genrank; din; logistic (user + item bias); features (the production baseline: a "
                             "logistic regression on aggregate features of earlier requests)")
    parser.add_argument("--aggregates", action=argparse.BooleanOptionalAction, default=None,
                        help="GenRank also reads the features baseline's aggregate features: a projection on each "
                             "token and a linear path to the logits (default: on, genrank_jax/training/defaults.py; "
                             "its export takes them as inputs, made from a feature store's counts by aggregates.json)")
    parser.add_argument("--features-hidden", type=non_negative_int, default=0,
                        help="--architecture features: hidden units of an MLP (0: logistic regression)")
    parser.add_argument("--organization", default="action", choices=["action", "item"])
    parser.add_argument("--block", default="transformer", choices=["transformer", "hstu"])
    parser.add_argument("--preset", default=None, choices=["tiny", "small", "paper"],
                        help="default: by data size (genrank_jax/training/defaults.py), 'tiny' for ml-100k, "
                             "else 'small'")
    parser.add_argument("--no-alibi", action="store_true", help="drop the ALiBi position bias")
    parser.add_argument("--no-time-bias", action="store_true", help="drop the ALiBi time bias")
    parser.add_argument("--attention-impl", default=None, help="xla, pallas_triton, pallas_mosaic_gpu, pallas_tpu")
    # None: chosen by the size of the data (genrank_jax/training/defaults.py); an explicit value always wins
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="train this many steps (default: by data size; not with --epochs)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="at most this many epochs, stopped early on the validation slice (default: by data "
                             "size; not with --steps: both set the run's length, so giving both is an error)")
    parser.add_argument("--patience", type=non_negative_int, default=None,
                        help="stop after this many validation evaluations without a new best (0: never; default 3)")
    parser.add_argument("--eval-every", type=non_negative_int, default=0,
                        help="validate every N steps (0: every epoch)")
    parser.add_argument("--validation-fraction", type=fraction, default=None,
                        help="latest fraction of train (by time) held out for validation (default 0.15; 0: none)")
    parser.add_argument("--schedule", default="epochs", choices=["epochs", "stream"],
                        help="epochs: passes over the train split with early stopping; stream: the whole log once in "
                             "time order, each --window scored before it is trained on (progressive validation)")
    parser.add_argument("--window", default="1d",
                        help="--schedule stream: a span of time (1d, 6h, 30m) or a number of exposures per window")
    parser.add_argument("--refit", action=argparse.BooleanOptionalAction, default=None,
                        help="after early stopping, train a fresh model on all of train (validation slice included) "
                             "for the best epoch count and report both evaluations (default: on for small data)")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--learning-rate", type=positive_float, default=None)
    parser.add_argument("--weight-decay", type=non_negative_float, default=None)
    parser.add_argument("--max-history", type=positive_int, default=None)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--checkpoint-every", type=non_negative_int, default=0, help="save every N steps (0: never)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in --out (verified; same model and settings)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the checkpoints and metrics.json another run left in --out (they are deleted)")
    parser.add_argument("--resume-fallback", action="store_true",
                        help="with --resume: if the latest checkpoint is damaged, resume from the latest good one "
                             "(warns; damaged steps are moved to checkpoints.corrupt/)")
    parser.add_argument("--allow-setting-changes", action="store_true",
                        help="with --resume: accept training settings that differ from the saved run's")
    parser.add_argument("--batch-building", default="auto", choices=["host", "device", "auto"],
                        help="build training batches with numpy on the host, or on the accelerator from columns put "
                             "there once (the host sends request indices only); auto: device on a GPU/TPU without "
                             "--mesh, host otherwise")
    parser.add_argument("--out", default=None,
                        help="output folder (metrics.json, checkpoints); default: the next free runs/train-N, or with "
                             "--resume the newest one")
    parser.add_argument("--no-progress", action="store_true")
    add_dry_run_flag(parser)
    sharded = parser.add_argument_group("several devices and hosts (genrank_jax.sharding)")
    sharded.add_argument("--mesh", default=None, help="train on a device mesh, e.g. data=4,model=2 (sizes multiply "
                         "to the device count of all processes): batch over data, table rows over model")
    sharded.add_argument("--transformer", default="replicated", choices=["replicated", "model"],
                         help="transformer weights replicated, or split over the model axis")
    sharded.add_argument("--table-axes", default="model", choices=["model", "data,model"],
                         help="mesh axes the embedding-table rows are split over")
    sharded.add_argument("--embedding-row-multiple", type=positive_int, default=1,
                         help="pad item/user/side tables to a multiple of this many rows so they split evenly")
    sharded.add_argument("--distributed", action="store_true",
                         help="join the other processes first (jax.distributed.initialize; the cluster is "
                              "detected on TPU slices, SLURM, Open MPI, or given by --coordinator/...)")
    sharded.add_argument("--coordinator", default=None, help="host:port of process 0 (with --distributed)")
    sharded.add_argument("--num-processes", type=positive_int, default=None)
    sharded.add_argument("--process-id", type=non_negative_int, default=None)
    sharded.add_argument("--distributed-timeout", type=positive_float, default=60.0,
                         help="seconds a process waits for the coordinator's address, and jax for the other processes, "
                              "before giving up (default 60)")


def format_table(results: dict, oracle: dict | None) -> str:
    header = (f"{'task':<12}{'AUC':>8}{'GAUC':>8}{'logloss':>9}{'pos.rate':>10}"
              + (f"{'oracle AUC':>12}" if oracle else ""))
    lines = [header, "-" * len(header)]
    for task, row in results.items():
        line = f"{task:<12}{row['auc']:>8.4f}{row['gauc']:>8.4f}{row['logloss']:>9.4f}{row['positive_rate']:>10.4f}"
        if oracle:
            line += f"{oracle[task]:>12.4f}"
        lines.append(line)
    return "\n".join(lines)


def machine() -> dict:
    """Device kind, platform, jax version and git commit (when run from a checkout) of this run."""
    import subprocess

    import jax

    device = jax.devices()[0]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True, cwd=pathlib.Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return dict(device_kind=device.device_kind, platform=device.platform, jax_version=jax.__version__,
                git_commit=commit)


# Fewer eval exposures than this make the printed metrics noise (an AUC over a few hundred rows
# moves by several points between seeds): the table is printed with a warning.
MIN_EVAL_EXPOSURES = 1000


def check_train_options(args) -> None:
    """Refuse option combinations before any data is read."""
    if args.steps is not None and args.epochs is not None:
        raise GenRankError(f"--steps {args.steps} and --epochs {args.epochs} both set the length of the run: give "
                           "one (--epochs N: at most N passes, stopped early on validation; --steps N: N steps)")
    if args.batch_building == "device" and args.mesh is not None:
        raise GenRankError(f"--batch-building device builds each batch on one device, not over --mesh {args.mesh}: "
                           "use --batch-building host (or auto) with a mesh")


def eval_size_lines(dataset, requests, max_candidates: int) -> tuple[str, str | None]:
    """(the eval set's size, a warning when it is under MIN_EVAL_EXPOSURES scored exposures, else None)."""
    from genrank_jax.training.trainer import candidate_rows

    scored = len(candidate_rows(dataset, requests, max_candidates))
    size = f"eval set: {len(requests):,} requests, {scored:,} scored exposures"
    if scored >= MIN_EVAL_EXPOSURES:
        return size, None
    return size, (f"warning: the eval set has only {scored:,} scored exposures (under {MIN_EVAL_EXPOSURES:,}): the "
                  "metrics below are noise; move the split earlier (more eval requests) or use more data")


def resolve_defaults(args, dataset) -> str:
    """Fill the options left unset from the data-size rule (genrank_jax/training/defaults.py); returns a line
    saying so."""
    from genrank_jax.training.defaults import defaults_for, train_exposures

    rule = defaults_for(dataset)
    chosen = []
    if args.schedule == "stream":  # one pass, scored as it goes: no epochs, no validation slice
        if args.epochs is not None or args.steps is not None:
            raise GenRankError("--schedule stream reads the log once: its length is the data's, so --epochs and "
                               "--steps do not apply")
        if args.validation_fraction or args.patience:
            raise GenRankError("--schedule stream scores each window before training on it: --validation-fraction "
                               "and --patience do not apply")
        args.steps, args.validation_fraction, args.patience = 1, 0.0, 0
        chosen.append(f"schedule=stream window={args.window}")
    for option, value in (("preset", rule.preset), ("learning_rate", rule.learning_rate),
                          ("weight_decay", rule.weight_decay), ("max_history", rule.max_history),
                          ("patience", rule.patience), ("validation_fraction", rule.validation_fraction)):
        if getattr(args, option) is None:
            setattr(args, option, value)
            chosen.append(f"{option}={value:g}" if isinstance(value, float) else f"{option}={value}")
    if args.refit is None:
        args.refit = rule.refit and args.schedule == "epochs"
        if args.refit:
            chosen.append("refit")
    if args.steps is None and args.epochs is None:
        args.epochs, args.steps = rule.epochs, rule.steps
        chosen.append(f"epochs<={rule.epochs}" if rule.epochs else f"steps={rule.steps}")
    args.epochs, args.steps = args.epochs or 0, args.steps or 1
    if not args.validation_fraction:
        args.patience = 0  # nothing to stop on
        args.refit = False  # no epoch count was chosen
    args.max_candidates = rule.max_candidates
    args.config_overrides = dict(rule.config)
    if args.aggregates is not None:  # an explicit choice wins over the rule
        args.config_overrides["use_aggregates"] = args.aggregates
    chosen += [f"max_candidates={rule.max_candidates}"] + [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                                       for k, v in args.config_overrides.items()]
    return (f"defaults for {rule.name} ({train_exposures(dataset):,} train exposures; "
            f"genrank_jax/training/defaults.py): " + ", ".join(chosen))


NO_CLUSTER = ("--distributed found no cluster to join (no SLURM, Open MPI or TPU slice around this process): "
              "pass --coordinator host:port --num-processes N --process-id I")


def _cluster_around() -> bool:
    """Whether jax.distributed.initialize could fill in the missing flags from a cluster. Asked
    first because initialize refuses a process whose backend is already up before it looks, and
    that message would hide this one."""
    import os

    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    try:
        from jax._src.clusters import ClusterEnv
        kinds = ClusterEnv._cluster_types
    except (ImportError, AttributeError):  # jax's private layout moved: let initialize decide
        return True
    return any(not getattr(kind, "opt_in_only_method", False) and kind.is_env_present() for kind in kinds)


def check_distributed_flags(args) -> None:
    """The --distributed flags' own errors (no cluster and no --coordinator, some of the three flags
    without the others, a --coordinator that is not host:port), before anything waits."""
    if args.coordinator is None and not _cluster_around():
        raise GenRankError(NO_CLUSTER)
    given = [args.coordinator, args.num_processes, args.process_id]
    if any(v is not None for v in given) and not all(v is not None for v in given):
        missing = [flag for flag, v in zip(("--coordinator", "--num-processes", "--process-id"), given) if v is None]
        raise GenRankError(f"--distributed with some of its flags needs all three: missing {', '.join(missing)}")
    if args.coordinator is not None:
        host, _, port = args.coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise GenRankError(f"--coordinator {args.coordinator!r} must be host:port")
    if args.process_id is not None and args.num_processes is not None and args.process_id >= args.num_processes:
        raise GenRankError(f"--process-id {args.process_id} must be below --num-processes {args.num_processes}")


# Holds the jax.distributed.initialize thread of a join that did not complete (Ctrl-C, the time-out,
# an error). Such a process leaves with os._exit (see `main`): jax's client, still blocked in C++ or
# shutting its coordination service down at exit, would otherwise hold the exit for seconds, or
# until its own deadline and then abort with a C++ stack trace.
_UNFINISHED_JOIN: list = []


def join_processes(args) -> None:
    """jax.distributed.initialize with one-line errors: missing flags are named; a process that is
    not the coordinator waits for its address at most --distributed-timeout seconds (jax's own wait
    is 5 minutes, then a C++ abort), and for the other processes to join as long again. Both waits
    end within a second on Ctrl-C: jax's runs in a thread (it blocks in C++, where Python never sees
    the signal) while this thread waits for it in short slices and ends it at the time-out itself
    (jax's own bound, 10 s later, would abort with a C++ stack trace)."""
    import inspect
    import math
    import socket
    import threading

    import jax

    check_distributed_flags(args)
    if args.coordinator is not None and args.process_id != 0:
        host, _, port = args.coordinator.rpartition(":")
        deadline = time.monotonic() + args.distributed_timeout
        while True:
            try:
                socket.create_connection((host, int(port)), timeout=0.5).close()
                break
            except OSError as error:
                if time.monotonic() > deadline:
                    raise GenRankError(f"the coordinator {args.coordinator} did not answer within "
                                       f"{args.distributed_timeout:g} s ({error.strerror or error}): is process 0 "
                                       "running, and is the address reachable from here?") from None
                time.sleep(0.2)
    # jax's own bound on its wait for the other processes, a little past ours so that ours speaks first
    timeout = {}
    if "initialization_timeout" in inspect.signature(jax.distributed.initialize).parameters:
        timeout["initialization_timeout"] = max(1, math.ceil(args.distributed_timeout)) + 10
    outcome: dict = {}

    def initialize():
        try:
            jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id, **timeout)
        except BaseException as error:  # handed to the waiting thread
            outcome["error"] = error

    where = f" at {args.coordinator}" if args.coordinator else ""
    print(f"joining {args.num_processes or 'the'} processes{where} (at most {args.distributed_timeout:g} s; "
          "Ctrl-C stops)", flush=True)
    thread = threading.Thread(target=initialize, name="jax.distributed.initialize", daemon=True)
    _UNFINISHED_JOIN.append(thread)
    thread.start()
    deadline = time.monotonic() + args.distributed_timeout
    while thread.is_alive():
        thread.join(0.05)
        if thread.is_alive() and time.monotonic() > deadline:
            raise GenRankError(f"the processes did not all join within {args.distributed_timeout:g} s"
                               + (f" at {args.coordinator}" if args.coordinator else "")
                               + ": are all of them started, with the same --coordinator and --num-processes?")
    error = outcome.get("error")
    if error is None:
        _UNFINISHED_JOIN.remove(thread)
        return
    if isinstance(error, (ValueError, RuntimeError)) and "coordinator_address" in str(error):
        raise GenRankError(NO_CLUSTER) from None
    # the cluster, not this code: a user-fixable error whichever kind jax raised
    raise GenRankError(f"joining the other processes failed: {error}") from error


def mesh_from_args(args):
    """The mesh and sharding options of `--mesh ...` (after joining the other processes), or None."""
    if args.distributed or args.coordinator is not None:
        join_processes(args)
    if args.mesh is None:
        return None, None
    from genrank_jax import sharding

    table_axes = tuple(args.table_axes.split(",")) if "," in args.table_axes else args.table_axes
    return sharding.make_mesh(args.mesh), sharding.ShardingOptions(table_axes=table_axes, transformer=args.transformer)


def train_settings(args, dataset):
    """(TrainConfig, GenRankConfig, the defaults line) of the options, the defaults the data's size
    picks filled in: the same for a run and its --dry-run."""
    from genrank_jax.data.batching import padded_max_tokens
    from genrank_jax.model.config import GenRankConfig
    from genrank_jax.training.trainer import TrainConfig

    defaults_line = resolve_defaults(args, dataset)
    train = TrainConfig(steps=args.steps, epochs=args.epochs, batch_size=args.batch_size,
                        learning_rate=args.learning_rate, weight_decay=args.weight_decay, seed=args.seed,
                        max_history=args.max_history, max_candidates=args.max_candidates,
                        checkpoint_every=args.checkpoint_every, validation_fraction=args.validation_fraction,
                        eval_every=args.eval_every, patience=args.patience, schedule=args.schedule,
                        window=args.window, batch_building=args.batch_building)
    config = GenRankConfig.preset(
        args.preset, dataset.spec, architecture=args.architecture, organization=args.organization,
        block=args.block, use_alibi=not args.no_alibi, use_time_bias=not args.no_time_bias,
        attention_impl=args.attention_impl, embedding_row_multiple=args.embedding_row_multiple,
        features_hidden=args.features_hidden, **args.config_overrides,
        max_tokens=max(GenRankConfig.preset(args.preset, dataset.spec).max_tokens,
                       padded_max_tokens(args.organization, args.max_history, train.max_candidates)),
    )
    return train, config, defaults_line


def check_train_folder(args, out: pathlib.Path) -> None:
    """Refuse an --out the run cannot use (a file; another run's results; --resume of nothing)."""
    from genrank_jax.training.trainer import OutputInUseError, check_output_folder

    if out.exists() and not out.is_dir():
        raise OutputInUseError(f"--out {out} is a file, not a folder")
    if args.resume and not out.exists():
        raise OutputInUseError(f"--resume: {out} does not exist, so there is no run to resume (a mistyped --out?)",
                               cli_hint="drop --resume to start a new run there")
    check_output_folder(out, resume=args.resume, overwrite=args.overwrite)
    if args.resume and not checkpoint_steps(out):
        # a run from step 0 printed as "resumed" hid a mistyped --out (or one that never saved)
        raise OutputInUseError(f"--resume: {out} holds no checkpoint to resume (none in {out / 'checkpoints'})",
                               cli_hint="drop --resume to start a new run there, or name the run's folder")


def checkpoint_steps(out: pathlib.Path) -> list[int]:
    """The saved steps in a train run's folder (finished checkpoints: orbax renames them into place)."""
    folder = pathlib.Path(out) / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def train_saved(out: pathlib.Path) -> bool:
    """Whether a train run saved anything in `out` (a checkpoint or its metrics.json)."""
    return bool(checkpoint_steps(out)) or (pathlib.Path(out) / "metrics.json").exists()


def train_folder(args, created) -> pathlib.Path:
    """The run's folder: --out; without it the next free runs/train-N (reserved now, unless --dry-run),
    or with --resume the newest runs/train-N. Prints it as the first line of output."""
    from genrank_jax.cli import output_folder
    from genrank_jax.training.trainer import OutputInUseError

    if args.out is not None:
        out = pathlib.Path(args.out)
        print(f"run folder: {out}")
        return out
    if args.resume:
        runs = output_folder.numbered_runs("train")
        if not runs:
            raise OutputInUseError(f"--resume without --out resumes the newest {output_folder.RUNS}/train-N, and "
                                   f"there is none in {output_folder.RUNS.resolve()}",
                                   cli_hint="name the run's folder with --out")
        newest = runs[-1]
        if not checkpoint_steps(newest):
            resumable = [f"{run} (step {checkpoint_steps(run)[-1]})" for run in reversed(runs) if checkpoint_steps(run)]
            choices = (f"runs with checkpoints: {', '.join(resumable)}" if resumable else
                       f"none of {', '.join(str(r) for r in runs)} holds one (trained without --checkpoint-every?)")
            raise OutputInUseError(f"--resume without --out resumes the newest run, {newest}, which holds no "
                                   f"checkpoint; {choices}", cli_hint="name the run to resume with --out")
        others = f"; other runs: {', '.join(str(r) for r in reversed(runs[:-1]))}" if len(runs) > 1 else ""
        print(f"run folder: {newest} (the newest {output_folder.RUNS}/train-N, resumed; --out names another{others})")
        args.out = str(newest)
        return newest
    if args.dry_run:
        out = output_folder.next_run("train")
        print(f"run folder: {out} ({output_folder.default_out_note('train')})")
    else:
        out = output_folder.reserve_run("train", created)
        print(f"run folder: {out} ({output_folder.default_out_note('train')})")
    args.out = str(out)
    return out


def run_train(args) -> int:
    from genrank_jax.cli.output_folder import CreatedFolders, removed_unless_saved

    check_train_options(args)
    created = CreatedFolders()
    out = train_folder(args, created)
    if args.dry_run:
        from genrank_jax.cli import dry_run
        return dry_run.train(args, out)
    # a run that fails before it saved anything leaves no folder behind that it created
    with removed_unless_saved(created, lambda: train_saved(out)):
        return _run_train(args, out, created)


def _run_train(args, out: pathlib.Path, created) -> int:
    from genrank_jax.data.sources import data_report, load_dataset

    check_train_folder(args, out)  # before the data loads: that can take minutes
    dataset = load_dataset(args.data, data_dir=args.data_dir, schema=args.schema, split=args.split, seed=args.seed,
                           skip_bad_rows=args.skip_bad_rows, drop_duplicates=args.drop_duplicates)
    for line in data_report(dataset):
        print(line)
    train, config, defaults_line = train_settings(args, dataset)
    created.make(out)
    mesh, sharding_options = mesh_from_args(args)
    import jax

    from genrank_jax.cli.output_folder import writer_lock

    # one writer per folder (process 0 of a multi-process run holds it for all of them)
    with writer_lock(out, "genrank-jax train") if jax.process_index() == 0 else contextlib.nullcontext():
        return _train_into(args, dataset, config, train, out, mesh, sharding_options, defaults_line)


def _train_into(args, dataset, config, train, out, mesh, sharding_options, defaults_line) -> int:
    from genrank_jax.training.curves import plot_training_curve
    from genrank_jax.training.trainer import Trainer, oracle_metrics

    trainer = Trainer(config, train, dataset, output_dir=out, mesh=mesh, sharding_options=sharding_options)
    if args.overwrite and (moved := trainer.overwrite_checkpoints()):
        print(f"--overwrite: moved the checkpoints at steps {moved} aside from {trainer.checkpoints.directory}; "
              "they are deleted once this run saves its first checkpoint")
    resumed_at = None
    if args.resume:  # run_train refused a folder without checkpoints
        resumed_at = trainer.resume(fallback=args.resume_fallback, allow_setting_changes=args.allow_setting_changes)
        print(f"resumed at step {resumed_at}")
    validation = (f" / {len(trainer.validation_requests):,} validation" if trainer.validation_requests is not None
                  else "")
    print(f"{dataset.name}: {len(trainer.train_requests):,} train{validation} / {len(trainer.eval_requests):,} eval "
          f"requests, {dataset.interactions.num_exposures:,} exposures; {config.architecture}/{config.organization}/"
          f"{config.block} preset={args.preset}\n{defaults_line}")
    started = time.perf_counter()
    try:
        trainer.fit(progress=not args.no_progress)
    except BaseException:
        if args.overwrite and trainer.put_back_replaced():
            print(f"the run failed before its first checkpoint: the replaced run's checkpoints are back in "
                  f"{trainer.checkpoints.directory}", file=sys.stderr)
        raise
    train_seconds = time.perf_counter() - started
    if train.schedule == "stream":
        return _report_stream(args, trainer, config, out, train_seconds)
    results = trainer.evaluate("eval")  # fit left the trainer in its best validation state
    best = trainer.best
    oracle = oracle_metrics(dataset, trainer.eval_requests, train.max_candidates)
    report = {
        "data": args.data, "command": user_command(["genrank-jax", "train", *args.argv]), "machine": machine(),
        "config": json.loads(config.to_json()),
        "train": {k: v for k, v in vars(args).items() if k not in ("argv", "run", "debug")},
        "steps": trainer.step, "train_seconds": train_seconds, "eval": results, "oracle_auc": oracle,
        "eval_state": "best validation" if best else "last",
        "best": {key: best[key] for key in ("step", "epoch", "auc")} if best else None,
        "stopped_early": trainer.stopped_early, "validation_curve": trainer.validation_curve,
        "final_loss": trainer.history[-1]["loss"] if trainer.history else None,
        # fraction of the padded token grid that was padding (batches pad to their own length bucket)
        "padding_ratio": float(np.mean([h["padding"] for h in trainer.history])) if trainer.history else None,
    }
    import jax

    refitted = None
    if args.refit and best:
        from genrank_jax.training.trainer import refit

        started = time.perf_counter()
        refitted = refit(trainer, out / "refit")
        report["refit"] = {"steps": refitted.step, "epochs": best["epoch"], "seconds": time.perf_counter() - started,
                           "train_requests": int(len(refitted.train_requests)), "eval": refitted.evaluate("eval"),
                           "checkpoints": str(out / "refit" / "checkpoints")}
    if jax.process_index() == 0:  # one writer when several processes train together
        (out / "metrics.json").write_text(json.dumps(report, indent=2, default=str))
        trainer.finish_overwrite()
    task = config.features.action_names[0]
    if best:
        if jax.process_index() == 0:
            plot_training_curve(trainer.validation_curve, out / "training.png", task=task, best_step=best["step"])
        stop = "stopped early" if trainer.stopped_early else "ran to the end"
        print(f"eval metrics of the best validation state: step {best['step']} (epoch {best['epoch']:.1f}, "
              f"validation {task} AUC {best['auc']:.4f}; {stop} at step {trainer.step})")
    size, warning = eval_size_lines(dataset, trainer.eval_requests, train.max_candidates)
    print(size)
    if warning:
        print(f"genrank-jax train: {warning}", file=sys.stderr)
    print(format_table(results, oracle))
    if refitted is not None:
        print(f"refit: a fresh model on all {len(refitted.train_requests):,} train requests for {best['epoch']:g} "
              f"epochs ({refitted.step} steps, {report['refit']['seconds']:.1f} s; checkpoints in "
              f"{report['refit']['checkpoints']}); its eval metrics:")
        print(format_table(report["refit"]["eval"], oracle))
    padding = f", {report['padding_ratio']:.1%} padding" if report["padding_ratio"] is not None else ""
    picture = f" and {out / 'training.png'}" if best else ""
    trained = (f"resumed at step {resumed_at}; trained {trainer.step - resumed_at} more steps in {train_seconds:.1f} s "
               f"(step {trainer.step} now)" if resumed_at is not None
               else f"trained {trainer.step} steps in {train_seconds:.1f} s")
    print(f"{trained}{padding}; metrics in {out / 'metrics.json'}{picture}")
    return 0


def _report_stream(args, trainer, config, out, train_seconds) -> int:
    """metrics.json, stream.png and the printed summary of a --schedule stream run (the final model
    has read the eval period too, so the figure is the progressive one, not an eval-split score)."""
    import jax

    from genrank_jax.training.curves import plot_stream_curve

    summary = trainer.stream_summary()
    report = {"data": args.data, "command": user_command(["genrank-jax", "train", *args.argv]), "machine": machine(),
              "config": json.loads(config.to_json()),
              "train": {k: v for k, v in vars(args).items() if k not in ("argv", "run", "debug")},
              "steps": trainer.step, "train_seconds": train_seconds, "stream": summary,
              "stream_curve": trainer.stream_curve,
              "final_loss": trainer.history[-1]["loss"] if trainer.history else None}
    task = config.features.action_names[0]
    if jax.process_index() == 0:
        (out / "metrics.json").write_text(json.dumps(report, indent=2, default=str))
        plot_stream_curve(trainer.stream_curve, out / "stream.png", task=task, warmup=summary["warmup_windows"])
        trainer.finish_overwrite()
    scored = sum(entry["exposures"] for entry in trainer.stream_curve[summary["warmup_windows"]:])
    print(f"stream: {summary['windows']} windows of {summary['window']}, each scored before training on it; "
          f"the figures average the {summary['windows'] - summary['warmup_windows']} windows from the eval "
          f"period on ({scored:,} exposures), weighted by exposures")
    print(f"{'task':<12}{'AUC':>8}{'GAUC':>8}   (all windows: AUC)")
    for name, row in summary["after_warmup"].items():
        print(f"{name:<12}{row['auc']:>8.4f}{row['gauc']:>8.4f}   ({summary['all_windows'][name]['auc']:.4f})")
    print(f"trained {trainer.step} steps in {train_seconds:.1f} s; metrics in {out / 'metrics.json'} and "
          f"{out / 'stream.png'}")
    return 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint folder of a training run (genrank-jax train --checkpoint-every N writes "
                             "<out>/checkpoints)")
    parser.add_argument("--out", default=None, help="folder for encode/score .jaxexport, params.npz, manifest.json "
                                                    "(default: the next free runs/export-N)")
    parser.add_argument("--platforms", default="cpu", help="comma-separated targets: cpu, cuda, tpu")
    parser.add_argument("--step", type=non_negative_int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--overwrite", action="store_true", help="replace the export another run left in --out")
    add_dry_run_flag(parser)


def written_folder(args, command: str, created) -> pathlib.Path:
    """--out, or the next free runs/<command>-N (reserved now, unless --dry-run); printed first."""
    from genrank_jax.cli import output_folder

    if args.out is not None:
        out = pathlib.Path(args.out)
        print(f"output folder: {out}")
        return out
    out = output_folder.next_run(command) if args.dry_run else output_folder.reserve_run(command, created)
    print(f"output folder: {out} ({output_folder.default_out_note(command)})")
    args.out = str(out)
    return out


def run_export(args) -> int:
    from genrank_jax.cli.output_folder import CreatedFolders, holds_files, removed_unless_saved

    created = CreatedFolders()
    out = written_folder(args, "export", created)
    # an export that fails leaves no folder behind that it created
    with removed_unless_saved(created, lambda: holds_files(out)):
        return _run_export(args, out)


def _run_export(args, out: pathlib.Path) -> int:
    import jax
    import numpy as np

    from genrank_jax.cli.output_folder import check_free
    from genrank_jax.serving.export import (
        check_aggregate_scaling,
        check_exportable,
        check_platforms,
        export_scorer,
        load_checkpoint_aggregates,
        load_checkpoint_model,
        load_checkpoint_vocabulary,
    )

    platforms = check_platforms(p.strip() for p in args.platforms.split(",") if p.strip())
    check_free(out, overwrite=args.overwrite)  # before the checkpoint is read
    model, step = load_checkpoint_model(args.checkpoint, args.step)
    vocabulary = load_checkpoint_vocabulary(args.checkpoint, step)
    scaling = load_checkpoint_aggregates(args.checkpoint) if model.config.use_aggregates else None
    names = (["encode.jaxexport", "score.jaxexport", "params.npz", "manifest.json"] + (["vocabulary.npz"]
             if vocabulary else []) + (["aggregates.json"] if scaling else []))
    files = ", ".join(names) + (" (vocabulary.npz: raw ids)" if vocabulary else "") + (
        " (aggregates.json: how to make the aggregate inputs from counts)" if scaling else "")
    if args.dry_run:
        from flax import nnx

        from genrank_jax.cli.dry_run import NOTHING_WRITTEN

        check_exportable(model)  # export_scorer checks these itself
        check_aggregate_scaling(model, scaling)
        params = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
        print(f"checkpoint: step {step} of {args.checkpoint} (verified: checksums, finite), GenRank "
              f"{model.config.organization}/{model.config.block} with {params:,} parameters"
              + (", trained on a user's own log (its vocabulary verified)" if vocabulary else ""))
        print(f"would export encode and score for {', '.join(platforms)}, each compiled through jax.export")
        print("would write: " + ", ".join(str(out / name) for name in names))
        print("expected time: " + ("under a minute (14 s for cpu, 19 s for cpu,cuda measured for a 241,476-parameter "
                                   "model on a 2-core CPU)" if params <= 10**6 else
                                   "not measured for a model of this size (the compile time grows with it)"))
        print(NOTHING_WRITTEN)
        return 0
    out = export_scorer(model, out, platforms=platforms, vocabulary=vocabulary, aggregate_scaling=scaling,
                        overwrite=args.overwrite)
    print(f"exported step {step} of {args.checkpoint} for {', '.join(platforms)} to {out}: {files}")
    return 0


def version_line() -> str:
    """`genrank-jax --version`: the package, jax, flax and the backend jax picks here."""
    import flax
    import jax

    import genrank_jax

    devices = jax.devices()
    kinds = sorted({device.device_kind for device in devices})
    return (f"genrank-jax {genrank_jax.__version__} (jax {jax.__version__}, flax {flax.__version__}, backend "
            f"{jax.default_backend()}: {len(devices)} x {', '.join(kinds)})")


class _Version(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = CommandLineParser(prog="genrank-jax", description=__doc__)
    parser.add_argument("--version", action=_Version, help="print the version of genrank-jax, jax and flax, and "
                                                           "the backend, and exit")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train GenRank or a baseline and evaluate it")
    add_train_arguments(train)
    train.set_defaults(run=run_train)
    lis = commands.add_parser("lis", help="Leakage Impact Score of leak kinds / features with probe rankers",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    try:
        from genrank_jax.leakage import cli as leakage_cli
        lis.description = leakage_cli.__doc__
        leakage_cli.add_arguments(lis)
        lis.set_defaults(run=leakage_cli.run)
    except ImportError as error:  # the leakage package failed to import: say so when `lis` is used
        lis.set_defaults(run=lambda args, error=error: _unavailable("lis", error))
    from genrank_jax.cli import simulate_command
    simulate = commands.add_parser("simulate", help="write the feed simulator's log as Parquet with its schema file",
                                   description=simulate_command.__doc__)
    simulate_command.add_arguments(simulate)
    simulate.set_defaults(run=simulate_command.run)
    export = commands.add_parser("export", help="write a trained model's encode/score functions with jax.export")
    add_export_arguments(export)
    export.set_defaults(run=run_export)
    add_debug_flags(parser)  # last: every subcommand, whoever added it, gets --debug
    return parser


def _unavailable(command: str, error: ImportError) -> int:
    raise GenRankError(f"genrank-jax {command} is unavailable: {error}")


def main(argv=None) -> int:
    """Run a subcommand; any error it raises is reported as one line (see genrank_jax/cli/command_line.py)."""
    args = parse_arguments(build_parser(), argv)
    args.argv = list(sys.argv[2:] if argv is None else argv[1:])  # recorded in metrics.json
    code = run_reporting_errors(f"genrank-jax {args.command}", lambda: args.run(args), debug=args.debug)
    if argv is None and _UNFINISHED_JOIN:  # the program itself (not a caller in Python) after a failed join
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # see _UNFINISHED_JOIN: now, not when jax's client lets go
    return code


if __name__ == "__main__":
    sys.exit(main())
