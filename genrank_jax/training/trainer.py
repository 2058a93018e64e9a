"""Training and evaluation: optax AdamW, a jit-compiled step, orbax checkpoints, NaN guard, early stopping.

Data order is a pure function of (seed, epoch), so a run resumed from a checkpoint at step s
sees exactly the batches an uninterrupted run sees after step s, and its loss curve is the same.

With `validation_fraction > 0` the model is fitted on the train split minus its validation slice
(the latest requests by time, `genrank_jax.data.holdout`), scored on the slice every epoch (or every
`eval_every` steps), stopped after `patience` evaluations without a new best, and left in its best
state. Eval is never looked at while training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import pathlib
import time
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from orbax.checkpoint.checkpoint_managers import AnyPreservationPolicy, BestN, LatestN

from genrank_jax import metrics, sharding
from genrank_jax.data.batching import BatchPlan, batch_shape, iterate_batches, plan_batches, planned_figures
from genrank_jax.data.device_samples import DeviceSampleBuilder
from genrank_jax.data.holdout import validation_slice
from genrank_jax.data.samples import SampleBuilder, SampleLayout
from genrank_jax.data.schema import RankingDataset
from genrank_jax.errors import GenRankError
from genrank_jax.model.baselines import build_model
from genrank_jax.model.config import GenRankConfig
from genrank_jax.model.losses import candidate_and_history_bce, candidate_bce
from genrank_jax.model.validation import BatchError, validate_batch
from genrank_jax.training.checkpoint import CheckpointError, Checkpoints, abstract_like
from genrank_jax.training.streaming import parse_window, stream_order, warmup_windows, weighted_mean, window_ids


class NonFiniteLossError(GenRankError, FloatingPointError):
    """The loss became NaN or infinite; training stopped without saving the bad state."""


class OutputInUseError(CheckpointError):
    """The output folder holds another run's checkpoints or results; neither resumed nor overwritten."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimization and run settings. lr_schedule: "cosine" (warmup then cosine decay), "constant".

    schedule: "epochs" (passes over the train split, shuffled; `steps` or `epochs`, early stopping on
      the validation slice) or "stream" (the whole log once in time order, each window scored before
      it is trained on: `genrank_jax.training.streaming`; `window` cuts it, steps follow from the data).

    epochs: when > 0, the run is `epochs` passes over the fitted requests (overrides `steps`).
    validation_fraction: when > 0, that latest fraction of the train requests is held out as the
      validation slice; the monitored figure is the first action's AUC on it.
    eval_every: steps between validation evaluations (0: once per epoch; the last step always).
    patience: stop after this many evaluations without a new best (0: never stop early).
    keep_best: best checkpoints kept on disk (by validation AUC) beside the latest ones.
    batch_building: where training batches are built: "host" (numpy, SampleBuilder), "device" (jnp
      on the default device, DeviceSampleBuilder: the host sends request indices only) or "auto"
      (device when jax's default backend is not the CPU and no mesh is used; host otherwise). Both
      build the same batches (timestamps to about a float32 ulp); evaluation batches are host-built.
    """

    steps: int = 500
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    schedule: Literal["epochs", "stream"] = "epochs"
    window: str = "1d"  # stream windows: a span of time (1d, 6h, 30m) or a number of exposures
    grad_clip: float = 1.0
    seed: int = 0
    max_history: int = 256
    max_candidates: int = 128
    min_history: int = 1
    checkpoint_every: int = 0  # 0: no checkpoints
    keep_checkpoints: int = 3
    epochs: int = 0
    validation_fraction: float = 0.0
    eval_every: int = 0
    patience: int = 0
    keep_best: int = 1
    batch_building: Literal["host", "device", "auto"] = "auto"

    # settings a resumed run may change without changing what it computes
    RESUME_FREE_FIELDS = ("checkpoint_every", "keep_checkpoints", "batch_building")

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be positive, got {self.steps}, {self.batch_size}")
        if self.epochs < 0 or self.eval_every < 0 or self.patience < 0 or self.keep_best < 1:
            raise ValueError(f"epochs, eval_every and patience must be >= 0 and keep_best >= 1, got {self.epochs}, "
                             f"{self.eval_every}, {self.patience}, {self.keep_best}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.patience and not self.validation_fraction:
            raise ValueError("early stopping (patience > 0) needs a validation slice: set validation_fraction > 0")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        if self.schedule not in ("epochs", "stream"):
            raise ValueError(f"schedule must be 'epochs' or 'stream', got {self.schedule!r}")
        if self.batch_building not in ("host", "device", "auto"):
            raise ValueError(f"batch_building must be 'host', 'device' or 'auto', got {self.batch_building!r}")
        if self.schedule == "stream":
            parse_window(self.window)
            if self.epochs or self.validation_fraction:
                raise ValueError("the stream schedule reads the log once and scores each window before training on "
                                 "it: epochs and a validation slice do not apply (got epochs="
                                 f"{self.epochs}, validation_fraction={self.validation_fraction})")


def run_settings(train: TrainConfig, dataset: RankingDataset, train_requests: np.ndarray) -> dict:
    """What a resumed run must share with the run that saved the checkpoint (besides the model config):
    the training settings that change the result and a fingerprint of the data it trains on."""
    fingerprint = hashlib.sha256()
    for array in (dataset.interactions.user_ids, dataset.interactions.item_ids, dataset.interactions.timestamps,
                  dataset.interactions.actions, train_requests):
        fingerprint.update(np.ascontiguousarray(array).view(np.uint8).reshape(-1))
    settings = {k: v for k, v in dataclasses.asdict(train).items() if k not in TrainConfig.RESUME_FREE_FIELDS}
    data = {"name": dataset.name, "exposures": int(dataset.interactions.num_exposures),
            "train_requests": int(len(train_requests)), "fingerprint": fingerprint.hexdigest()[:16]}
    if dataset.vocabulary is not None:  # the raw-id mapping the checkpoint's tables are indexed by
        data["vocabulary"] = dataset.vocabulary.digest()
    return {"train": settings, "data": data}



VALIDATION_METRIC = "validation_auc"


def _validation_auc(metrics: dict) -> float:
    return metrics[VALIDATION_METRIC]


def retention(train: TrainConfig, *, validated: bool) -> dict:
    """Which checkpoints orbax keeps (Checkpoints options): the latest `keep_checkpoints`; with a
    validation slice also the `keep_best` with the highest validation AUC. That is orbax's own
    best-checkpoint machinery: `best_fn` + `best_mode="max"` make the manager store each save's
    metrics and answer `best_step()`; the preservation policy keeps the best k (`BestN`, what
    `best_fn` + `max_to_keep` alone would become) and also the latest (`LatestN`), so a resumed run
    always finds its newest step even when that step is not among the best."""
    if not validated:
        return {"keep": train.keep_checkpoints}
    policy = AnyPreservationPolicy([
        LatestN(n=train.keep_checkpoints),
        BestN(get_metric_fn=_validation_auc, reverse=False, n=train.keep_best, keep_checkpoints_without_metrics=False),
    ])
    return {"keep": None, "manager_options": {"best_fn": _validation_auc, "best_mode": "max",
                                              "preservation_policy": policy}}


def make_optimizer(train: TrainConfig) -> optax.GradientTransformation:
    if train.lr_schedule == "cosine":
        warmup = min(train.warmup_steps, train.steps // 2)
        rate = optax.warmup_cosine_decay_schedule(
            0.0, train.learning_rate, warmup, max(train.steps, warmup + 1), train.learning_rate * 0.05)
    else:
        rate = optax.linear_schedule(0.0, train.learning_rate, max(1, min(train.warmup_steps, train.steps)))
    return optax.chain(optax.clip_by_global_norm(train.grad_clip),
                       optax.adamw(rate, weight_decay=train.weight_decay))


def resolve_batch_building(choice: str, mesh) -> str:
    """"host" or "device" for TrainConfig.batch_building `choice` (see there) on `mesh` (None: one device)."""
    if choice == "device" and mesh is not None:
        raise ValueError("batch_building='device' builds each batch on one device, not over a mesh: use "
                         "batch_building='host' (or 'auto') with a mesh")
    if choice == "auto":
        return "device" if mesh is None and jax.default_backend() != "cpu" else "host"
    return choice


def usable_requests(builder: SampleBuilder, requests: np.ndarray, min_history: int) -> np.ndarray:
    """Requests whose user has at least `min_history` earlier exposures (GenRank needs some)."""
    return requests[builder.history_count[requests] >= min_history]


def train_step_fn(graphdef, task_weights, shardings=None, donate: bool = False):
    """A jit-compiled (state, batch) -> (state, loss, per_task) step over split NNX state.

    shardings: (state shardings, batch sharding) on a mesh; the state keeps its layout across
    steps and the loss comes back replicated. None: one device. donate: the new state reuses the
    old state's buffers (the old state is gone after the call; the Trainer keeps it for its NaN
    guard, a loop that needs the memory does not)."""

    def loss_of(model, batch):
        if getattr(model, "config", None) is not None and getattr(model.config, "history_loss", False):
            return candidate_and_history_bce(*model.logits_with_history(batch), batch, task_weights)
        return candidate_bce(model(batch), batch, task_weights)

    def step(state, batch):
        model, optimizer = nnx.merge(graphdef, state)
        (loss, per_task), grads = nnx.value_and_grad(loss_of, has_aux=True)(model, batch)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss, per_task

    donated = (0,) if donate else ()
    if shardings is None:
        return jax.jit(step, donate_argnums=donated)
    state_shardings, batch_sharding = shardings
    replicated = batch_sharding.update(spec=jax.sharding.PartitionSpec())
    return jax.jit(step, in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, replicated, replicated), donate_argnums=donated)


def predict_fn(graphdef, shardings=None):
    def predict(state, batch):
        model, _ = nnx.merge(graphdef, state)
        return model(batch)

    if shardings is None:
        return jax.jit(predict)
    state_shardings, batch_sharding = shardings
    # logits replicated: every process reads all of them for the metrics
    return jax.jit(predict, in_shardings=(state_shardings, batch_sharding),
                   out_shardings=batch_sharding.update(spec=jax.sharding.PartitionSpec()))


def model_and_optimizer(config: GenRankConfig, train: TrainConfig, dataset: RankingDataset,
                        train_requests: np.ndarray):
    """A run's fresh (model, optimizer). numpy only outside the model: it also runs traced (sharded
    init, and nnx.eval_shape for `genrank-jax train --dry-run`)."""
    model = build_model(config, rngs=nnx.Rngs(train.seed))
    if hasattr(model, "set_prior"):  # models that start from the base rates (see LogisticBias)
        rows = candidate_rows(dataset, train_requests, train.max_candidates)
        model.set_prior(dataset.interactions.actions[rows].mean(axis=0))
    return model, nnx.Optimizer(model, make_optimizer(train), wrt=nnx.Param)


@dataclasses.dataclass(frozen=True)
class RequestPlan:
    """What a run trains, validates and evaluates on (`plan_requests`); train_config has the run's
    step count fixed (epochs x batches_per_epoch when it counts epochs)."""

    layout: SampleLayout
    builder: SampleBuilder
    plan: BatchPlan
    train_requests: np.ndarray
    validation_requests: np.ndarray | None
    eval_requests: np.ndarray
    batches_per_epoch: int
    train_config: TrainConfig
    # the stream schedule's windows (request indices per window), warm-up count and step offsets
    stream_windows: list[np.ndarray] | None = None
    stream_warmup: int = 0
    stream_offsets: np.ndarray | None = None


def plan_requests(config: GenRankConfig, train: TrainConfig, dataset: RankingDataset) -> RequestPlan:
    """The requests and batches of a run, checked (ValueError for a run that cannot work) before any
    model exists: what `Trainer` starts from, and what `genrank-jax train --dry-run` reports."""
    layout = SampleLayout(max_history=train.max_history, max_candidates=train.max_candidates,
                          num_gap_buckets=config.num_gap_buckets, num_request_slots=config.num_request_slots,
                          num_slots=config.num_slots, organization=config.organization,
                          aggregates=config.reads_aggregates)
    builder = SampleBuilder(dataset, layout)
    fit_requests, validation_requests = dataset.train_requests, None
    if train.schedule == "stream":  # the whole log, in time order
        fit_requests = stream_order(dataset)
    if train.validation_fraction:
        fit_requests, held = validation_slice(dataset, train.validation_fraction)
        validation_requests = usable_requests(builder, held, train.min_history)
        if not len(validation_requests):
            raise ValueError(f"no validation request has at least {train.min_history} history exposures")
    train_requests = usable_requests(builder, fit_requests, train.min_history)
    eval_requests = usable_requests(builder, dataset.eval_requests, train.min_history)
    if not len(train_requests):
        raise ValueError(f"no training request has at least {train.min_history} history exposures")
    longest = int(builder.token_counts(train_requests).max())
    if longest > config.max_tokens:
        raise ValueError(f"samples need up to {longest} tokens but max_tokens={config.max_tokens}; "
                         "lower max_history or raise max_tokens")
    if train.batch_size > len(train_requests):
        # a batch is allocated whole ([batch, tokens] per field): 10^9 rows is a MemoryError
        raise ValueError(f"batch_size {train.batch_size:,} is larger than the {len(train_requests):,} "
                         "training requests: a batch holds at most every request once")
    plan = BatchPlan(batch_size=train.batch_size, seed=train.seed)
    if train.schedule == "stream":
        ids = window_ids(dataset, train_requests, parse_window(train.window))
        windows = [train_requests[ids == w] for w in range(int(ids.max()) + 1)]
        # window w's batches: the plan of its requests, shuffled with (seed, w) like an epoch's
        sizes = [len(plan_batches(builder, requests, plan, w)) for w, requests in enumerate(windows)]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        train = dataclasses.replace(train, steps=int(offsets[-1]))
        return RequestPlan(layout, builder, plan, train_requests, validation_requests, eval_requests,
                           int(offsets[-1]), train, windows, warmup_windows(dataset, train_requests, ids), offsets)
    batches_per_epoch = len(plan_batches(builder, train_requests, plan, 0))
    if train.epochs:  # the schedule decays over the whole run, so steps are fixed before the optimizer
        train = dataclasses.replace(train, steps=train.epochs * batches_per_epoch)
    return RequestPlan(layout, builder, plan, train_requests, validation_requests, eval_requests,
                       batches_per_epoch, train)


class Trainer:
    """Trains one model config on one dataset; evaluates; checkpoints under `output_dir`.

    mesh: a ("data", "model") mesh (`genrank_jax.sharding.make_mesh`) to train on all its devices,
    several processes included: the state is laid out by `genrank_jax.sharding.RULES`
    (`sharding_options`), each process builds its rows of every batch, and the steps compute what
    the one-device steps compute. None: the default device.
    """

    def __init__(self, config: GenRankConfig, train: TrainConfig, dataset: RankingDataset,
                 output_dir: str | pathlib.Path | None = None, *, mesh=None,
                 sharding_options: sharding.ShardingOptions | None = None):
        if config.features != dataset.spec:
            raise ValueError(f"config.features {config.features} do not match the dataset's {dataset.spec}")
        self.config, self.dataset = config, dataset
        requests = plan_requests(config, train, dataset)
        self.layout, self.builder, self.plan = requests.layout, requests.builder, requests.plan
        self.train_requests, self.validation_requests = requests.train_requests, requests.validation_requests
        self.eval_requests, self.batches_per_epoch = requests.eval_requests, requests.batches_per_epoch
        self.stream_windows, self.stream_warmup = requests.stream_windows, requests.stream_warmup
        self.stream_offsets = requests.stream_offsets
        # one entry per stream window: its time span, scored exposures, metrics before training on it, loss
        self.stream_curve: list[dict] = []
        train = self.train_config = requests.train_config
        self.eval_interval = train.eval_every or self.batches_per_epoch

        def make():
            return model_and_optimizer(config, train, dataset, self.train_requests)

        self.mesh, shardings = mesh, None
        if mesh is None:
            self.graphdef, self.state = nnx.split(make())
        else:  # every check before any compilation
            self.rows = sharding.process_rows(mesh, train.batch_size)
            self.graphdef, self.state, state_shardings = sharding.init_sharded(
                make, mesh, sharding_options or sharding.ShardingOptions())
            shardings = state_shardings, sharding.batch_sharding(mesh)
        # resolved here, before the first step: "device" on a mesh is refused before any compilation
        self.batch_building = resolve_batch_building(train.batch_building, mesh)
        self.device_builder = DeviceSampleBuilder(self.builder) if self.batch_building == "device" else None
        self._step = train_step_fn(self.graphdef, config.task_weights, shardings)
        self._predict = predict_fn(self.graphdef, shardings)
        self.step = 0
        self.history: list[dict] = []
        # one entry per validation evaluation: step, epoch, train_loss, auc (the monitored figure), tasks
        self.validation_curve: list[dict] = []
        self.validation_seconds = 0.0  # time spent scoring the validation slice (not training)
        self._best_state = None  # the state at the best evaluation, when it is in memory
        self.checkpoints = None
        # the folder's checkpoints are this run's once it resumed from them, or once it checked the
        # folder was free (or overwrote it) before its first save
        self._owns_checkpoints = False
        self._allow_setting_changes = False  # set by resume(allow_setting_changes=True)
        if output_dir is not None:  # found on resume whatever checkpoint_every says
            self.checkpoints = Checkpoints(pathlib.Path(output_dir) / "checkpoints", config_json=config.to_json(),
                                           every=train.checkpoint_every,
                                           settings=run_settings(train, dataset, self.train_requests),
                                           **retention(train, validated=self.validation_requests is not None))

    @property
    def model(self):
        """The current model as an NNX module (a fresh view of the trained state)."""
        return nnx.merge(self.graphdef, self.state)[0]

    def resume(self, *, fallback: bool = False, allow_setting_changes: bool = False) -> int:
        """Restore the latest checkpoint if there is one; returns the step training continues from.

        The checkpoint is verified (checksums, finite values) and must match this run's model config
        and settings (`allow_setting_changes` accepts other training settings). A damaged latest step
        raises `CorruptCheckpointError` naming the latest good one; `fallback=True` resumes from that
        one with a warning. See `genrank_jax.training.checkpoint`.
        """
        if self.checkpoints is None:
            return self.step
        if self.checkpoints.latest_step() is None:
            self._owns_checkpoints = True
            return self.step
        restored, meta = self.checkpoints.restore(self._abstract_state(), fallback=fallback,
                                                  allow_setting_changes=allow_setting_changes)
        # the best checkpoint restored at the end may be one the saved run wrote with its settings
        self._allow_setting_changes = allow_setting_changes
        nnx.replace_by_pure_dict(self.state, restored)
        self.step = int(meta["step"])
        self.history = list(meta.get("history", []))
        self.validation_curve = list(meta.get("validation_curve", []))  # the best-so-far comes back with it
        self.stream_curve = list(meta.get("stream_curve", []))  # windows already scored
        self._owns_checkpoints = True
        return self.step

    def overwrite_checkpoints(self) -> list[int]:
        """Replace the checkpoints another run left in the output folder (an explicit choice): they
        are moved aside now and deleted once this run has saved its first checkpoint (or by
        `finish_overwrite`); returns their steps. `put_back_replaced` undoes it if this run fails."""
        if self.checkpoints is None:
            return []
        moved = self.checkpoints.move_aside()
        self._owns_checkpoints = True
        return moved

    def finish_overwrite(self) -> None:
        """The run ended well: delete the replaced run's checkpoints even if this one saved none."""
        if self.checkpoints is not None:
            self.checkpoints.discard_replaced()

    def put_back_replaced(self) -> bool:
        """The run failed before saving anything: the replaced run's checkpoints go back in place."""
        return self.checkpoints is not None and self.checkpoints.put_back_replaced()

    def _abstract_state(self):
        return abstract_like(nnx.to_pure_dict(self.state))

    def _claim_checkpoints(self) -> None:
        """Refuse to write into a folder holding another run's checkpoints (saving would delete or mix them)."""
        if self._owns_checkpoints or self.checkpoints is None:
            return
        steps = self.checkpoints.all_steps()
        if steps:
            raise OutputInUseError(
                f"{self.checkpoints.directory} holds another run's checkpoints (steps {steps})",
                hint="continue that run with Trainer.resume() or replace it with Trainer.overwrite_checkpoints()",
                cli_hint="continue that run with --resume, replace it with --overwrite, or choose another --out")
        self._owns_checkpoints = True
        if self.dataset.vocabulary is not None and jax.process_index() == 0:
            # beside every step: their settings record its digest, which export checks
            self.checkpoints.directory.mkdir(parents=True, exist_ok=True)
            from genrank_jax.data.own_log.vocabulary import FILE_NAME

            self.dataset.vocabulary.save(self.checkpoints.directory / FILE_NAME)
        if self.builder.aggregate_scaling is not None and jax.process_index() == 0:
            # what turns a feature store's counts into this model's aggregate inputs: export ships it
            from genrank_jax.data.aggregates import SCALING_FILE

            self.checkpoints.directory.mkdir(parents=True, exist_ok=True)
            self.builder.aggregate_scaling.save(self.checkpoints.directory / SCALING_FILE)

    def last_good_checkpoint(self) -> int | None:
        """The newest saved step that verifies (checksums and finite values), or None."""
        if self.checkpoints is None or self.checkpoints.latest_step() is None:
            return None
        return self.checkpoints.latest_good_step(self._abstract_state())

    def _batches_from(self, step: int):
        """(batch, exposures, padding ratio) of the epochs' batches from `step` on (see `_batches_of`)."""
        epoch, skip = divmod(step, self.batches_per_epoch)
        while True:
            yield from self._batches_of(self.train_requests, epoch, skip)
            epoch, skip = epoch + 1, 0

    def _batches_of(self, requests: np.ndarray, epoch: int, skip: int = 0):
        """(batch, exposures, padding ratio) of this process's training batches of `requests` (all of
        each batch without a mesh, its rows with one), in the plan's order for `epoch`, from batch
        `skip`. Host batches are checked by validate_batch; device batches come with their plan's figures."""
        if self.device_builder is not None:
            yield from self._device_batches(requests, epoch, skip)
            return
        batches = (iterate_batches(self.builder, requests, self.plan, epoch, skip) if self.mesh is None
                   else sharding.local_batches(self.builder, requests, self.plan, self.rows, epoch, skip))
        for batch in batches:
            validate_batch(batch, self.config)
            yield batch, batch.num_exposures(), batch.padding_ratio()

    def _device_batches(self, requests: np.ndarray, epoch: int, skip: int):
        """Batches built on the device. validate_batch is skipped: it would pull each batch back to the
        host, which is what building on the device avoids. What it checks holds by construction: the
        dataset was validated when the SampleBuilder was made (ids, side values, finite times) and the
        DeviceSampleBuilder checked the rest (0/1 actions, finite content and aggregates); request
        slots and gap buckets are capped by the layout made from this config. The two checks left
        that depend on the batch are made here from the plan: the padded length against max_tokens,
        empty histories."""
        size = self.plan.batch_size
        for group in plan_batches(self.builder, requests, self.plan, epoch)[skip:]:
            seq_len, slots = batch_shape(self.builder, group)
            if seq_len > self.config.max_tokens:
                raise BatchError(f"sequences of {seq_len} tokens exceed the model's "
                                 f"max_tokens={self.config.max_tokens}")
            empty = np.flatnonzero(np.minimum(self.builder.history_count[group], self.layout.max_history) == 0)
            if len(empty):
                raise BatchError(f"row {int(empty[0])} has an empty history: GenRank ranks from behaviour; drop "
                                 "first requests (min_history=1) or give the user some history")
            batch = self.device_builder.build(group, seq_len, size, candidate_slots=slots)
            yield (batch, *planned_figures(self.builder, group, seq_len, size))

    @property
    def best(self) -> dict | None:
        """The validation evaluation with the highest monitored AUC so far (the earliest on a tie)."""
        return max(self.validation_curve, key=lambda entry: entry["auc"], default=None)

    @property
    def stopped_early(self) -> bool:
        """Whether `patience` evaluations have passed without a new best."""
        best, patience = self.best, self.train_config.patience
        return bool(patience and best is not None
                    and sum(entry["step"] > best["step"] for entry in self.validation_curve) >= patience)

    def score_validation(self) -> dict[str, dict[str, float]]:
        """AUC / GAUC / log loss per task of the current state on the validation slice (not recorded)."""
        if self.validation_requests is None:
            raise ValueError("this run has no validation slice (TrainConfig.validation_fraction is 0)")
        labels, logits, users = self.predict(self.validation_requests)
        return metrics.task_metrics(labels, logits, users, self.config.features.action_names)

    def validate(self) -> dict:
        """Score the validation slice now; append to (and return the entry of) the validation curve.

        With checkpoints, the state is saved with its validation AUC as the orbax metric: the
        manager's best-checkpoint policy keeps the `keep_best` best of them beside the latest ones.
        """
        started = time.perf_counter()
        tasks = self.score_validation()
        since = self.validation_curve[-1]["step"] if self.validation_curve else 0
        losses = [h["loss"] for h in self.history if h["step"] > since]
        entry = {"step": self.step, "epoch": self.step / self.batches_per_epoch,
                 "train_loss": float(np.mean(losses)) if losses else None,
                 "auc": tasks[self.config.features.action_names[0]]["auc"],
                 "tasks": {task: {k: row[k] for k in ("auc", "gauc", "logloss")} for task, row in tasks.items()}}
        self.validation_curve.append(entry)
        if self.checkpoints is not None:
            self._claim_checkpoints()
            self.checkpoints.save(self.step, nnx.to_pure_dict(self.state), self._checkpoint_extra(),
                                  metrics={VALIDATION_METRIC: entry["auc"]})
        elif self.best is entry:
            self._best_state = self.state  # no checkpoints: kept in memory (a reference: jax arrays are immutable)
        self.validation_seconds += time.perf_counter() - started
        return entry

    def _checkpoint_extra(self) -> dict:
        return {"history": self.history, "validation_curve": self.validation_curve, "stream_curve": self.stream_curve}

    def restore_best(self) -> dict | None:
        """Put the best validation state back into the trainer (from orbax's best checkpoint when the run
        has checkpoints); returns its validation curve entry."""
        best = self.best
        if best is None:
            return None
        if self.checkpoints is not None:
            step = self.checkpoints.manager.best_step()
            if step != best["step"]:
                raise CheckpointError(f"the best checkpoint in {self.checkpoints.directory} is step {step}, but this "
                                      f"run's validation curve peaks at step {best['step']}")
            restored, _ = self.checkpoints.restore(self._abstract_state(), step=step,
                                                   allow_setting_changes=self._allow_setting_changes)
            nnx.replace_by_pure_dict(self.state, restored)
        elif self._best_state is not None:
            self.state = self._best_state
        return best

    def _on_devices(self, batch, whole: bool = False):
        """The batch as a step's input: on the default device, or global over the mesh from this
        process's rows (`batch` holds just those rows, or all of them when `whole`)."""
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, batch)
        size = self.train_config.batch_size
        if whole:
            size = batch.batch_size
            batch = jax.tree.map(lambda x: x[sharding.process_rows(self.mesh, size)], batch)
        return sharding.global_batch(batch, self.mesh, size)

    def _mesh_context(self):
        """The mesh as jax's current mesh, so the attention op runs per device block."""
        return contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh)

    def fit(self, steps: int | None = None, progress: bool = False, log_every: int = 10,
            restore_best: bool = True) -> list[dict]:
        """Train until `steps` (default the config's) total steps or early stopping; returns the per-step history.

        With a validation slice, it is scored every `eval_interval` steps and at the run's last step,
        and (with `restore_best`) the trainer ends in the best-scoring state.
        """
        target = self.train_config.steps if steps is None else steps
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=target, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        if self.train_config.checkpoint_every:
            self._claim_checkpoints()
        if self.train_config.schedule == "stream":
            return self._stream(target, bar, log_every)
        exposures, started = 0, time.perf_counter()
        batches = self._batches_from(self.step)
        while self.step < target and not self.stopped_early:
            batch, batch_exposures, padding = next(batches)
            loss = self._train_on(batch, padding)
            exposures += batch_exposures
            if self.validation_requests is not None and (
                    self.step % self.eval_interval == 0 or self.step == self.train_config.steps):
                entry = self.validate()  # saves a checkpoint with the validation AUC when there are checkpoints
                if bar is not None:
                    bar.write(f"step {self.step} (epoch {entry['epoch']:.1f}): validation AUC {entry['auc']:.4f}"
                              f"{' (best)' if self.best is entry else ''}")
            self._save_on_schedule()
            self._show(bar, loss, exposures, started, log_every, target)
        if bar is not None:
            bar.close()
        if restore_best and self.validation_requests is not None:
            self.restore_best()
        return self.history

    def _train_on(self, batch, padding: float) -> float:
        """One optimizer step on `batch` (checked by `_batches_of`); its loss. A non-finite loss stops
        the run, state unchanged. padding: the batch's padding ratio, for the history."""
        with self._mesh_context():
            new_state, loss, per_task = self._step(self.state, self._on_devices(batch))
        loss = float(loss)
        if not math.isfinite(loss):
            last = self.last_good_checkpoint() if self._owns_checkpoints else None
            where = (f"; the last good (verified) checkpoint is step {last} in {self.checkpoints.directory}"
                     if last is not None else "; no verified checkpoint of this run exists")
            raise NonFiniteLossError(f"loss became {loss} at step {self.step + 1}{where}")
        self.state = new_state
        self.step += 1
        self.history.append({"step": self.step, "loss": loss, "padding": padding})
        return loss

    def _save_on_schedule(self) -> None:
        if self.checkpoints is not None and self.train_config.checkpoint_every \
                and self.step % self.train_config.checkpoint_every == 0 and self.checkpoints.latest_step() != self.step:
            self.checkpoints.save(self.step, nnx.to_pure_dict(self.state), self._checkpoint_extra())

    def _show(self, bar, loss: float, exposures: int, started: float, log_every: int, target: int) -> None:
        if bar is not None:
            bar.update(1)
            if self.step % log_every == 0 or self.step == target:
                rate = exposures / max(time.perf_counter() - started, 1e-9)
                padding = np.mean([h["padding"] for h in self.history[-log_every:]])
                bar.set_postfix(loss=f"{loss:.4f}", exposures_per_s=f"{rate:,.0f}", padding=f"{padding:.0%}")

    def _stream(self, target: int, bar, log_every: int) -> list[dict]:
        """The stream schedule (see `genrank_jax.training.streaming`): for each window not yet trained on, score
        it (unless a resumed run already did), then train on it once; stops at `target` steps."""
        exposures, started = 0, time.perf_counter()
        names = self.config.features.action_names
        for w, requests in enumerate(self.stream_windows):
            begin, end = int(self.stream_offsets[w]), int(self.stream_offsets[w + 1])
            if self.step >= end:
                continue
            if self.step >= target:
                break
            if len(self.stream_curve) <= w:  # scored before any step on it: progressive validation
                labels, logits, users = self.predict(requests)
                times = self.dataset.interactions.request_times()[requests]
                self.stream_curve.append({
                    "window": w, "start_time": float(times.min()), "end_time": float(times.max()),
                    "requests": int(len(requests)), "exposures": int(len(labels)), "step": self.step,
                    "warmup": w < self.stream_warmup, "tasks": metrics.task_metrics(labels, logits, users, names)})
            for batch, batch_exposures, padding in self._batches_of(requests, w, self.step - begin):
                loss = self._train_on(batch, padding)
                exposures += batch_exposures
                self._save_on_schedule()
                self._show(bar, loss, exposures, started, log_every, target)
                if self.step >= target:
                    break
            losses = [h["loss"] for h in self.history if begin < h["step"] <= end]
            self.stream_curve[w]["train_loss"] = float(np.mean(losses)) if losses else None
        if bar is not None:
            bar.close()
        return self.history

    def stream_summary(self) -> dict:
        """Per task: the exposure-weighted mean AUC and GAUC over the scored windows after the warm-up
        (and over all of them), with the window counts."""
        names = self.config.features.action_names
        skip = self.stream_warmup
        return {"windows": len(self.stream_windows), "scored_windows": len(self.stream_curve), "warmup_windows": skip,
                "window": self.train_config.window,
                "after_warmup": {t: {k: weighted_mean(self.stream_curve, t, k, skip) for k in ("auc", "gauc")}
                                 for t in names},
                "all_windows": {t: {k: weighted_mean(self.stream_curve, t, k) for k in ("auc", "gauc")}
                                for t in names}}

    def predict(self, requests: np.ndarray, batch_size: int | None = None):
        """(labels [E, A], logits [E, A], users [E]) over the candidates of `requests`, in a fixed order."""
        plan = BatchPlan(batch_size=batch_size or self.train_config.batch_size, shuffle=False)
        labels, logits, users = [], [], []
        for batch in iterate_batches(self.builder, requests, plan):
            with self._mesh_context():
                out = np.asarray(self._predict(self.state, self._on_devices(batch, whole=True)))
            mask = batch.candidate_mask()
            labels.append(batch.labels[mask])
            logits.append(out[mask])
            users.append(np.broadcast_to(batch.user_ids[:, None], mask.shape)[mask])
        return np.concatenate(labels), np.concatenate(logits), np.concatenate(users)

    def evaluate(self, split: str = "eval") -> dict[str, dict[str, float]]:
        """AUC / GAUC / log loss per task on `split` ("eval" or "train")."""
        requests = self.eval_requests if split == "eval" else self.train_requests
        labels, logits, users = self.predict(requests)
        return metrics.task_metrics(labels, logits, users, self.config.features.action_names)


def check_output_folder(out: str | pathlib.Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse an output folder holding another run's checkpoints or metrics.json unless the caller
    resumes that run or overwrites it (raises `OutputInUseError` saying what is there)."""
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: resume continues the saved run, "
                         "overwrite replaces it")
    out = pathlib.Path(out)
    folder = out / "checkpoints"
    steps = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []
    metrics_file = out / "metrics.json"
    if overwrite:
        return
    if not resume and (steps or metrics_file.exists()):
        held = [f"checkpoints at steps {steps}"] if steps else []
        held += [metrics_file.name] if metrics_file.exists() else []
        raise OutputInUseError(f"{out} holds another run's {' and '.join(held)}",
                               hint="continue that run with resume=True, replace it with overwrite=True, or "
                                    "choose another folder",
                               cli_hint="continue that run with --resume, replace it with --overwrite, or choose "
                                        "another --out")
    if resume and not steps and metrics_file.exists():
        raise OutputInUseError(f"{out} holds a finished run's {metrics_file.name} but no checkpoint to resume "
                               f"from (in {folder})", hint="replace it with overwrite=True or choose another folder",
                               cli_hint="replace it with --overwrite or choose another --out")


def candidate_rows(dataset: RankingDataset, requests: np.ndarray, max_candidates: int) -> np.ndarray:
    """[E] exposure rows scored for `requests` (each request's first max_candidates)."""
    starts = dataset.interactions.request_starts
    return np.concatenate([np.arange(starts[r], min(starts[r + 1], starts[r] + max_candidates))
                           for r in requests]) if len(requests) else np.zeros(0, np.int64)


def oracle_metrics(dataset: RankingDataset, requests: np.ndarray, max_candidates: int) -> dict[str, float] | None:
    """AUC per task of the true probabilities on the candidates of `requests` (simulated data only)."""
    if dataset.oracle_probabilities is None:
        return None
    rows = candidate_rows(dataset, requests, max_candidates)
    labels = dataset.interactions.actions[rows]
    return {name: metrics.auc(labels[:, t], dataset.oracle_probabilities[rows, t])
            for t, name in enumerate(dataset.spec.action_names)}


def refit(trainer: Trainer, output_dir: str | pathlib.Path | None = None) -> Trainer:
    """A fresh model trained on all of train (the validation slice included) for the epoch count at
    which `trainer`'s validation curve peaked: the slice chose how long to train, and the latest
    requests, nearest the eval period, are then learnt from too. Returns the refitted Trainer."""
    best = trainer.best
    if best is None:
        raise ValueError("refit needs a run with a validation curve (validation_fraction > 0, fitted)")
    everything = usable_requests(trainer.builder, trainer.dataset.train_requests, trainer.train_config.min_history)
    per_epoch = len(plan_batches(trainer.builder, everything, trainer.plan, 0))
    steps = max(1, round(best["epoch"] * per_epoch))
    train = dataclasses.replace(trainer.train_config, validation_fraction=0.0, patience=0, epochs=0, steps=steps)
    fitted = Trainer(trainer.config, train, trainer.dataset, output_dir, mesh=trainer.mesh)
    fitted.fit()
    if fitted.checkpoints is not None and fitted.checkpoints.latest_step() != fitted.step:
        fitted._claim_checkpoints()  # the refitted model is what a user exports
        fitted.checkpoints.save(fitted.step, nnx.to_pure_dict(fitted.state), fitted._checkpoint_extra())
    return fitted
