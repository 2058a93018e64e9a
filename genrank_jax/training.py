"""Training and evaluation: optax AdamW, a jit-compiled step, orbax checkpoints, NaN guard, early stopping.

Data order is a pure function of (seed, epoch), so a run resumed from a checkpoint at step s
sees exactly the batches an uninterrupted run sees after step s, and its loss curve is the same.

With `validation_fraction > 0` the model is fitted on the train split minus its validation slice
(the latest requests by time, `genrank_jax.data.holdout`), scored on the slice every epoch (or every
`eval_every` steps), stopped after `patience` evaluations without a new best, and left in its best
state. Eval is never looked at while training.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from genrank_jax import metrics
from genrank_jax.baselines import build_model
from genrank_jax.checkpoint import Checkpoints, abstract_like
from genrank_jax.config import GenRankConfig
from genrank_jax.data.batching import BatchPlan, iterate_batches, plan_batches
from genrank_jax.data.holdout import validation_slice
from genrank_jax.data.samples import SampleBuilder, SampleLayout
from genrank_jax.data.schema import RankingDataset
from genrank_jax.losses import candidate_bce
from genrank_jax.validation import validate_batch


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped without saving the bad state."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimization and run settings. schedule: "cosine" (warmup then cosine decay), "constant".

    epochs: when > 0, the run is `epochs` passes over the fitted requests (overrides `steps`).
    validation_fraction: when > 0, that latest fraction of the train requests is held out as the
      validation slice; the monitored figure is the first action's AUC on it.
    eval_every: steps between validation evaluations (0: once per epoch; the last step always).
    patience: stop after this many evaluations without a new best (0: never stop early).
    keep_best: best checkpoints kept on disk (by validation AUC) beside the latest ones.
    """

    steps: int = 500
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    schedule: Literal["cosine", "constant"] = "cosine"
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
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")


def make_optimizer(train: TrainConfig) -> optax.GradientTransformation:
    if train.schedule == "cosine":
        warmup = min(train.warmup_steps, train.steps // 2)
        rate = optax.warmup_cosine_decay_schedule(
            0.0, train.learning_rate, warmup, max(train.steps, warmup + 1), train.learning_rate * 0.05)
    else:
        rate = optax.linear_schedule(0.0, train.learning_rate, max(1, min(train.warmup_steps, train.steps)))
    return optax.chain(optax.clip_by_global_norm(train.grad_clip),
                       optax.adamw(rate, weight_decay=train.weight_decay))


def usable_requests(builder: SampleBuilder, requests: np.ndarray, min_history: int) -> np.ndarray:
    """Requests whose user has at least `min_history` earlier exposures (GenRank needs some)."""
    return requests[builder.history_count[requests] >= min_history]


def train_step_fn(graphdef, task_weights):
    """A jit-compiled (state, batch) -> (state, loss, per_task) step over split NNX state."""

    def loss_of(model, batch):
        return candidate_bce(model(batch), batch, task_weights)

    @jax.jit
    def step(state, batch):
        model, optimizer = nnx.merge(graphdef, state)
        (loss, per_task), grads = nnx.value_and_grad(loss_of, has_aux=True)(model, batch)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss, per_task

    return step


def predict_fn(graphdef):
    @jax.jit
    def predict(state, batch):
        model, _ = nnx.merge(graphdef, state)
        return model(batch)

    return predict


class Trainer:
    """Trains one model config on one dataset; evaluates; checkpoints under `output_dir`."""

    def __init__(self, config: GenRankConfig, train: TrainConfig, dataset: RankingDataset,
                 output_dir: str | pathlib.Path | None = None):
        if config.features != dataset.spec:
            raise ValueError(f"config.features {config.features} do not match the dataset's {dataset.spec}")
        self.config, self.train_config, self.dataset = config, train, dataset
        self.layout = SampleLayout(max_history=train.max_history, max_candidates=train.max_candidates,
                                   num_gap_buckets=config.num_gap_buckets,
                                   num_request_slots=config.num_request_slots, num_slots=config.num_slots,
                                   organization=config.organization)
        self.builder = SampleBuilder(dataset, self.layout)
        fit_requests, self.validation_requests = dataset.train_requests, None
        if train.validation_fraction:
            fit_requests, held = validation_slice(dataset, train.validation_fraction)
            self.validation_requests = usable_requests(self.builder, held, train.min_history)
            if not len(self.validation_requests):
                raise ValueError(f"no validation request has at least {train.min_history} history exposures")
        self.train_requests = usable_requests(self.builder, fit_requests, train.min_history)
        self.eval_requests = usable_requests(self.builder, dataset.eval_requests, train.min_history)
        if not len(self.train_requests):
            raise ValueError(f"no training request has at least {train.min_history} history exposures")
        longest = int(self.builder.token_counts(self.train_requests).max())
        if longest > config.max_tokens:
            raise ValueError(f"samples need up to {longest} tokens but max_tokens={config.max_tokens}; "
                             "lower max_history or raise max_tokens")
        self.plan = BatchPlan(batch_size=train.batch_size, seed=train.seed)
        self.batches_per_epoch = len(plan_batches(self.builder, self.train_requests, self.plan, 0))
        if train.epochs:  # the schedule decays over the whole run, so steps are fixed before the optimizer
            train = self.train_config = dataclasses.replace(train, steps=train.epochs * self.batches_per_epoch)
        self.eval_interval = train.eval_every or self.batches_per_epoch
        model = build_model(config, rngs=nnx.Rngs(train.seed))
        optimizer = nnx.Optimizer(model, make_optimizer(train), wrt=nnx.Param)
        self.graphdef, self.state = nnx.split((model, optimizer))
        self._step = train_step_fn(self.graphdef, config.task_weights)
        self._predict = predict_fn(self.graphdef)
        self.step = 0
        self.history: list[dict] = []
        # one entry per validation evaluation: step, epoch, train_loss, auc (the monitored figure), tasks
        self.validation_curve: list[dict] = []
        self.validation_seconds = 0.0  # time spent scoring the validation slice (not training)
        self._best_state = None  # the state at the best evaluation, when it is in memory
        self.checkpoints = None
        if output_dir is not None and train.checkpoint_every:
            self.checkpoints = Checkpoints(pathlib.Path(output_dir) / "checkpoints", config_json=config.to_json(),
                                           every=train.checkpoint_every, keep=train.keep_checkpoints)

    @property
    def model(self):
        """The current model as an NNX module (a fresh view of the trained state)."""
        return nnx.merge(self.graphdef, self.state)[0]

    def resume(self) -> int:
        """Restore the latest checkpoint if there is one; returns the step training continues from."""
        if self.checkpoints is None or self.checkpoints.latest_step() is None:
            return self.step
        pure = nnx.to_pure_dict(self.state)
        restored, meta = self.checkpoints.restore(abstract_like(pure))
        nnx.replace_by_pure_dict(self.state, restored)
        self.step = int(meta["step"])
        self.history = list(meta.get("history", []))
        return self.step

    def _batches_from(self, step: int):
        epoch, skip = divmod(step, self.batches_per_epoch)
        while True:
            yield from iterate_batches(self.builder, self.train_requests, self.plan, epoch, skip)
            epoch, skip = epoch + 1, 0

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

    def validate(self) -> dict:
        """Score the validation slice now; append to (and return the entry of) the validation curve."""
        if self.validation_requests is None:
            raise ValueError("this run has no validation slice (TrainConfig.validation_fraction is 0)")
        started = time.perf_counter()
        labels, logits, users = self.predict(self.validation_requests)
        tasks = metrics.task_metrics(labels, logits, users, self.config.features.action_names)
        since = self.validation_curve[-1]["step"] if self.validation_curve else 0
        losses = [h["loss"] for h in self.history if h["step"] > since]
        entry = {"step": self.step, "epoch": self.step / self.batches_per_epoch,
                 "train_loss": float(np.mean(losses)) if losses else None,
                 "auc": tasks[self.config.features.action_names[0]]["auc"],
                 "tasks": {task: {k: row[k] for k in ("auc", "gauc", "logloss")} for task, row in tasks.items()}}
        self.validation_curve.append(entry)
        if self.best is entry:
            self._best_state = self.state  # jax arrays are immutable: a reference, not a copy
        self.validation_seconds += time.perf_counter() - started
        return entry

    def restore_best(self) -> dict | None:
        """Put the best validation state back into the trainer; returns its curve entry."""
        best = self.best
        if best is not None and self._best_state is not None:
            self.state = self._best_state
        return best

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
        exposures, started = 0, time.perf_counter()
        batches = self._batches_from(self.step)
        while self.step < target and not self.stopped_early:
            batch = next(batches)
            validate_batch(batch, self.config)
            new_state, loss, per_task = self._step(self.state, jax.tree.map(jnp.asarray, batch))
            loss = float(loss)
            if not math.isfinite(loss):
                last = self.checkpoints.latest_step() if self.checkpoints else None
                where = f"; the last good checkpoint is step {last} in {self.checkpoints.directory}" if last is not None \
                    else "; no checkpoint was saved"
                raise NonFiniteLossError(f"loss became {loss} at step {self.step + 1}{where}")
            self.state = new_state
            self.step += 1
            exposures += batch.num_exposures()
            self.history.append({"step": self.step, "loss": loss, "padding": batch.padding_ratio()})
            if self.validation_requests is not None and (
                    self.step % self.eval_interval == 0 or self.step == self.train_config.steps):
                entry = self.validate()
                if bar is not None:
                    bar.write(f"step {self.step} (epoch {entry['epoch']:.1f}): validation AUC {entry['auc']:.4f}"
                              f"{' (best)' if self.best is entry else ''}")
            if self.checkpoints is not None and self.step % self.checkpoints.every == 0:
                self.checkpoints.save(self.step, nnx.to_pure_dict(self.state), {"history": self.history})
            if bar is not None:
                bar.update(1)
                if self.step % log_every == 0 or self.step == target:
                    rate = exposures / max(time.perf_counter() - started, 1e-9)
                    padding = np.mean([h["padding"] for h in self.history[-log_every:]])
                    bar.set_postfix(loss=f"{loss:.4f}", exposures_per_s=f"{rate:,.0f}", padding=f"{padding:.0%}")
        if bar is not None:
            bar.close()
        if restore_best and self.validation_requests is not None:
            self.restore_best()
        return self.history

    def predict(self, requests: np.ndarray, batch_size: int | None = None):
        """(labels [E, A], logits [E, A], users [E]) over the candidates of `requests`, in a fixed order."""
        plan = BatchPlan(batch_size=batch_size or self.train_config.batch_size, shuffle=False)
        labels, logits, users = [], [], []
        for batch in iterate_batches(self.builder, requests, plan):
            out = np.asarray(self._predict(self.state, jax.tree.map(jnp.asarray, batch)))
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
