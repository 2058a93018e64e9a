"""`--dry-run`: a command's checks without its work, and what the work would be.

Every command that writes (`train`, `lis`, `export`, `simulate`) takes `--dry-run`. It runs the
checks the real run makes, through the same functions, so a refusal is the same one-line error
(exit 2): every option, the data source (genrank_jax/data/preview.py: opened, its schema and a
first batch read, nothing prepared), the output folder (free, not locked by a running run), and
the checkpoint to resume or export (opened and verified). Then it prints what the run would do:
the data, the model's size, the steps, the output folder and the files it would write, and the
expected time where a measured run with the same settings exists (`MEASURED`). Nothing is written:
not the output folder, not the prepared-data cache, not a lock.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

NOTHING_WRITTEN = "dry run: nothing was written"


@dataclasses.dataclass(frozen=True)
class MeasuredRun:
    """Seconds a training step took on a machine, with the settings that decide a step's cost."""

    preset: str
    architecture: str
    organization: str
    block: str
    max_history: int
    max_candidates: int
    batch_size: int
    platform: str
    cores: int
    seconds_per_step: float
    source: str


# The README's two `train` runs (bench/results/train_*.json), training time over steps (compilation
# and validation included; loading the data and the final evaluation add ~15 s), the defaults on
# each kind of data, measured with other jobs on the same 2 cores (load average 6 to 7.6).
MEASURED = (
    MeasuredRun("small", "genrank", "action", "transformer", 56, 128, 64, "cpu", 2, 0.132,
                "genrank-jax train: 1000 steps in 132 s, bench/results/train_default.json"),
    MeasuredRun("tiny", "genrank", "action", "transformer", 128, 64, 64, "cpu", 2, 0.45,
                "genrank-jax train --data movielens:100k: 224 steps in 101 s, bench/results/train_ml-100k.json"),
)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def expected_time(args, steps: int) -> str:
    """'about N min on ...' from a measured run with these settings, or why there is none."""
    import jax

    platform = jax.default_backend()
    if steps == 0:
        return "no step left to train: the run would only evaluate"
    for run in MEASURED:
        if (run.preset, run.architecture, run.organization, run.block, run.max_history, run.max_candidates,
                run.batch_size, run.platform) == (args.preset, args.architecture, args.organization, args.block,
                                                   args.max_history, args.max_candidates, args.batch_size, platform):
            seconds = steps * run.seconds_per_step
            here = "" if cores() == run.cores else f"; this machine has {cores()} cores"
            return (f"about {_duration(seconds)} ({steps:,} steps at {run.seconds_per_step:g} s a step, measured on "
                    f"a {run.cores}-core {run.platform.upper()} by {run.source}{here})")
    return (f"not measured for preset {args.preset} {args.architecture}/{args.organization}/{args.block}, "
            f"max_history {args.max_history}, batch {args.batch_size} on {platform}")


def _duration(seconds: float) -> str:
    return (f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min" if seconds < 5400
            else f"{seconds / 3600:.1f} h")


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


def train(args, out: pathlib.Path) -> int:
    """`genrank-jax train --dry-run` (see the module docstring); `out` is the run's folder, printed."""
    import jax
    import numpy as np
    from flax import nnx

    from genrank_jax import sharding
    from genrank_jax.cli import commands
    from genrank_jax.cli.output_folder import check_unlocked
    from genrank_jax.data.preview import preview_source
    from genrank_jax.data.sources import data_report
    from genrank_jax.sharding.rules import check_divisible
    from genrank_jax.training.trainer import model_and_optimizer, plan_requests

    # the checks in the order the run makes them, so that the first refusal is the run's
    commands.check_train_folder(args, out)
    preview = preview_source(args.data, data_dir=args.data_dir, schema=args.schema, split=args.split, seed=args.seed,
                             skip_bad_rows=args.skip_bad_rows, drop_duplicates=args.drop_duplicates)
    dataset = preview.dataset
    settings = commands.train_settings(args, dataset) if dataset is not None else None
    distributed = args.distributed or args.coordinator is not None
    mesh = None
    if distributed:
        commands.check_distributed_flags(args)
    if args.mesh is not None:
        # the device count is only known once the processes joined; alone, the mesh must fit this machine
        mesh = (_SizedMesh(sharding.parse_mesh_spec(args.mesh)) if distributed
                else sharding.make_mesh(args.mesh))
    check_unlocked(out)
    for line in preview.lines:
        print(line)
    if distributed:
        print(_joining(args))
    would_write = (f"would write: {out / 'metrics.json'}, {out / 'training.png'}"
                   + (f", checkpoints in {out / 'checkpoints'}" if args.checkpoint_every or args.resume else ""))
    if dataset is None:
        print("model size, steps and the defaults the data's size picks (genrank_jax/training/defaults.py): known once "
              "the data is prepared; the first run prepares it, and a --dry-run after that reports them")
        print(would_write)
        print(NOTHING_WRITTEN)
        return 0
    for line in data_report(dataset):
        print(line)
    train_config, config, defaults_line = settings
    print(defaults_line)
    requests = plan_requests(config, train_config, dataset)  # the Trainer's own checks
    train_config = requests.train_config
    graphdef, abstract = nnx.split(nnx.eval_shape(
        lambda: model_and_optimizer(config, train_config, dataset, requests.train_requests)))
    model_state = nnx.state(nnx.merge(graphdef, abstract)[0], nnx.Param)
    params = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(model_state))
    param_bytes = sum(int(np.prod(leaf.shape)) * leaf.dtype.itemsize for leaf in jax.tree.leaves(model_state))
    state_bytes = sum(int(np.prod(leaf.shape)) * leaf.dtype.itemsize for leaf in jax.tree.leaves(abstract))
    if mesh is not None:  # the Trainer checks the batch, then the parameters' layout
        sharding.check_batch_size(mesh, train_config.batch_size)
        pure = nnx.to_pure_dict(abstract)
        table_axes = tuple(args.table_axes.split(",")) if "," in args.table_axes else args.table_axes
        options = sharding.ShardingOptions(table_axes=table_axes, transformer=args.transformer)
        check_divisible(pure, sharding.state_specs(pure, options), mesh)
    resumed_at, resumed = (_check_resume(args, out, config, train_config, dataset, requests, abstract) if args.resume
                           else (0, None))
    print(f"model: {config.architecture}/{config.organization}/{config.block}, preset {args.preset}: {params:,} "
          f"parameters ({_mib(param_bytes)}; {_mib(state_bytes)} with the optimizer's state)"
          + (f", on mesh {sharding.describe(mesh)}" if mesh is not None else ""))
    validation = (f"; validated on {len(requests.validation_requests):,} requests every "
                  f"{train_config.eval_every or requests.batches_per_epoch} steps"
                  + (f", stopped after {train_config.patience} evaluations without a new best" if train_config.patience
                     else "") if requests.validation_requests is not None else "; no validation slice")
    length = (f"at most {train_config.steps:,} steps ({train_config.epochs} epochs of {requests.batches_per_epoch:,} "
              "batches)" if train_config.epochs else f"{train_config.steps:,} steps")
    print(f"steps: {length}, batch {train_config.batch_size}, on {len(requests.train_requests):,} train requests"
          f"{validation}; evaluated on {len(requests.eval_requests):,} eval requests")
    if resumed is not None:
        print(resumed)
    print(f"expected time: {expected_time(args, max(0, train_config.steps - resumed_at))}")
    print(would_write)
    print(NOTHING_WRITTEN)
    return 0


@dataclasses.dataclass
class _SizedMesh:
    """A mesh's axis sizes, for the divisibility checks of a run whose devices are not joined yet."""

    shape: dict


def _joining(args) -> str:
    if args.coordinator is None:
        return "distributed: would join the processes of the cluster around this one (jax finds them)"
    role = "the coordinator" if args.process_id == 0 else f"process {args.process_id}"
    return (f"distributed: would join {args.num_processes} processes at {args.coordinator} as {role}, waiting at "
            f"most {args.distributed_timeout:g} s")


def _check_resume(args, out, config, train_config, dataset, requests, abstract) -> tuple[int, str]:
    """What --resume would restore: the latest checkpoint opened, its config and settings compared
    and its arrays verified, as the run does (the same errors)."""
    import jax
    from flax import nnx

    from genrank_jax.training.checkpoint import Checkpoints, CorruptCheckpointError
    from genrank_jax.training.trainer import run_settings

    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          nnx.to_pure_dict(abstract))
    checkpoints = Checkpoints(out / "checkpoints", config_json=config.to_json(), keep=None,
                              settings=run_settings(train_config, dataset, requests.train_requests))
    try:
        _, meta = checkpoints.restore(target, allow_setting_changes=args.allow_setting_changes)
        step = int(meta["step"])
        return step, f"resume: from step {step} (verified: checksums, finite, same model and settings)"
    except CorruptCheckpointError as error:
        if not args.resume_fallback or error.good_step is None:
            raise
        return error.good_step, (f"resume: from step {error.good_step} (--resume-fallback; the damaged steps would "
                                 f"move to {checkpoints.quarantine}: {error.message})")
    finally:
        checkpoints.close()
