"""The learning-curve pictures `genrank-jax train` writes beside metrics.json (matplotlib, Agg backend)."""

from __future__ import annotations

import pathlib


def plot_training_curve(curve: list[dict], path: str | pathlib.Path, *, task: str,
                        best_step: int | None = None) -> None:
    """PNG of the training loss (left axis) and validation AUC of `task` (right axis) per epoch.

    curve: Trainer.validation_curve (one entry per evaluation: epoch, train_loss, auc); the best
    evaluation is marked.
    """
    import matplotlib
    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    epochs = [entry["epoch"] for entry in curve]
    fig, loss_axis = plt.subplots(figsize=(5.5, 3.2), dpi=100)
    losses = [(entry["epoch"], entry["train_loss"]) for entry in curve if entry["train_loss"] is not None]
    loss_axis.plot([e for e, _ in losses], [v for _, v in losses], "o-", color="tab:blue", label="training loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("training loss", color="tab:blue")
    auc_axis = loss_axis.twinx()
    auc_axis.plot(epochs, [entry["auc"] for entry in curve], "s-", color="tab:orange", label=f"validation {task} AUC")
    auc_axis.set_ylabel(f"validation {task} AUC", color="tab:orange")
    for entry in curve:
        if entry["step"] == best_step:
            auc_axis.axvline(entry["epoch"], color="gray", linestyle=":", linewidth=1)
            auc_axis.annotate(f"best (step {best_step})", (entry["epoch"], entry["auc"]), textcoords="offset points",
                              xytext=(-6, -14), ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def plot_stream_curve(curve: list[dict], path: str | pathlib.Path, *, task: str, warmup: int) -> None:
    """PNG of the progressive-validation AUC of `task` per stream window (right axis) beside the
    training loss on each window (left axis), over the windows' start dates; the warm-up is shaded.

    curve: Trainer.stream_curve (one entry per window: start_time, tasks, train_loss).
    """
    import datetime

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    when = [datetime.datetime.fromtimestamp(entry["start_time"], datetime.timezone.utc) for entry in curve]
    fig, loss_axis = plt.subplots(figsize=(6.5, 3.2), dpi=100)
    losses = [(t, entry.get("train_loss")) for t, entry in zip(when, curve) if entry.get("train_loss") is not None]
    loss_axis.plot([t for t, _ in losses], [v for _, v in losses], ".-", color="tab:blue", label="training loss")
    loss_axis.set_ylabel("training loss on the window", color="tab:blue")
    auc_axis = loss_axis.twinx()
    auc_axis.plot(when, [entry["tasks"][task]["auc"] for entry in curve], ".-", color="tab:orange")
    auc_axis.set_ylabel(f"{task} AUC before training on it", color="tab:orange")
    if 0 < warmup < len(when):
        loss_axis.axvspan(when[0], when[warmup], color="gray", alpha=0.15, label="warm-up")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


__all__ = ["plot_stream_curve", "plot_training_curve"]
