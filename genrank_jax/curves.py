"""The learning-curve picture `genrank-jax train` writes beside metrics.json (matplotlib, Agg backend)."""

from __future__ import annotations

import pathlib


def plot_training_curve(curve: list[dict], path: str | pathlib.Path, *, task: str, best_step: int | None = None) -> None:
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


__all__ = ["plot_training_curve"]
