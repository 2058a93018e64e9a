"""Training: the Trainer and what it needs around it.

`trainer` (TrainConfig, Trainer, the train step, refit), `streaming` (the stream schedule's
windows), `checkpoint` (verified Orbax checkpoints), `defaults` (the settings the data's size
picks) and `curves` (the training and stream curves the CLI plots).
"""

from genrank_jax.training.checkpoint import CheckpointError, Checkpoints, CorruptCheckpointError, SettingsMismatchError
from genrank_jax.training.defaults import RunDefaults, defaults_for
from genrank_jax.training.trainer import (
    VALIDATION_METRIC,
    NonFiniteLossError,
    OutputInUseError,
    RequestPlan,
    TrainConfig,
    Trainer,
    candidate_rows,
    check_output_folder,
    make_optimizer,
    model_and_optimizer,
    oracle_metrics,
    plan_requests,
    predict_fn,
    refit,
    resolve_batch_building,
    retention,
    run_settings,
    train_step_fn,
    usable_requests,
)

__all__ = [
    "TrainConfig", "Trainer", "NonFiniteLossError", "OutputInUseError", "make_optimizer", "refit",
    "VALIDATION_METRIC", "RequestPlan", "candidate_rows", "check_output_folder", "model_and_optimizer",
    "oracle_metrics", "plan_requests", "predict_fn", "resolve_batch_building", "retention", "run_settings",
    "train_step_fn", "usable_requests",
    "CheckpointError", "Checkpoints", "CorruptCheckpointError", "SettingsMismatchError",
    "RunDefaults", "defaults_for",
]
