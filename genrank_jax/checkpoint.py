"""Orbax checkpoints of a training run: model + optimizer state, the step, and the config.

A checkpoint stores the model config as JSON beside the arrays; restoring into a run with another
config fails with a message naming the fields that differ, and unreadable (corrupt) checkpoints
raise `CheckpointError` naming the directory, never a bare orbax/tensorstore trace.
"""

from __future__ import annotations

import json
import pathlib

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored into this run (corrupt, missing or mismatched)."""


def _differences(saved: dict, current: dict, prefix="") -> list[str]:
    names = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names += _differences(a, b, f"{prefix}{key}.")
        elif a != b and not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)):
            names.append(f"{prefix}{key}: saved {a!r}, now {b!r}")
    return names


class Checkpoints:
    """Save every `every` steps, keep the last `keep`; restore the latest (or a given) step."""

    def __init__(self, directory, *, config_json: str, every: int = 100, keep: int = 3):
        self.directory = pathlib.Path(directory).absolute()
        self.config_json = config_json
        self.every = every
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=max(1, every), create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, extra: dict | None = None, *, force: bool = False) -> bool:
        """Save `state` (a pytree of arrays) at `step`; returns whether a checkpoint was written."""
        meta = {"config": json.loads(self.config_json), "step": step, **(extra or {})}
        saved = self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)
        self.manager.wait_until_finished()
        return saved

    def restore(self, abstract_state, step: int | None = None):
        """(state, meta) at `step` (default latest), checked against this run's config."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as error:  # orbax raises many types for unreadable files
            raise CheckpointError(f"checkpoint at step {step} in {self.directory} is corrupt or unreadable "
                                  f"(metadata): {type(error).__name__}: {error}") from error
        differences = _differences(meta.get("config", {}), json.loads(self.config_json))
        if differences:
            raise CheckpointError(f"checkpoint at step {step} in {self.directory} was written for another "
                                  f"model config: " + "; ".join(differences))
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state)))["state"]
        except Exception as error:
            raise CheckpointError(f"checkpoint at step {step} in {self.directory} is corrupt or does not "
                                  f"match the model's parameters: {type(error).__name__}: {error}") from error
        return restored, meta

    def close(self):
        self.manager.close()


def abstract_like(state):
    """ShapeDtypeStructs of `state`, the target orbax restores into."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), state)


__all__ = ["CheckpointError", "Checkpoints", "abstract_like"]
