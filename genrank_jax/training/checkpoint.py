"""Orbax checkpoints of a training run: model + optimizer state, the step, the config and settings.

Nothing saved is lost or restored silently wrong:
- each checkpoint stores the model config and the run's training settings as JSON beside the
  arrays; restoring into a run with another config, or other settings, fails with a message naming
  every field that differs (`SettingsMismatchError`, unless the caller allows the change);
- each array's SHA-256 is stored at save time and checked on restore, and the restored state must
  be finite: a damaged step raises `CorruptCheckpointError` naming it and the latest earlier step
  that verifies, or (with `fallback=True`) restores that step with a warning and moves the damaged
  steps aside to `<directory>.corrupt/` (kept, never deleted);
- a save that orbax skips or that fails raises `CheckpointError` (never a silent `False`);
- unreadable checkpoints raise `CheckpointError` naming the directory, never a bare orbax trace.

Arrays that are not fully addressable from this process (multi-process sharding) get no checksum:
they are checked for finiteness only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import shutil
import uuid
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from genrank_jax.errors import GenRankError


class CheckpointError(GenRankError, RuntimeError):
    """A checkpoint that cannot be saved, or restored into this run (missing or mismatched)."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint whose arrays fail their checksum or finiteness check, or cannot be read.

    step: the damaged step; good_step: the latest earlier step that verifies (None if none does)."""

    def __init__(self, message: str, step: int, good_step: int | None = None, **hints):
        super().__init__(message, **hints)
        self.step, self.good_step = step, good_step


class SettingsMismatchError(CheckpointError):
    """A checkpoint written with other training settings than this run's."""


def _differences(saved: dict, current: dict, prefix="") -> list[str]:
    names = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names += _differences(a, b, f"{prefix}{key}.")
        elif a != b and not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)):
            names.append(f"{prefix}{key}: saved {a!r}, now {b!r}")
    return names


def _short(error: Exception) -> str:
    """`Type: first line` of an orbax/tensorstore error (theirs run to dozens of lines of spec),
    with the operating system's reason when one is in the chain ("No space left on device")."""
    lines = str(error).strip().splitlines() or [""]
    text = f"{type(error).__name__}: {lines[0][:300]}"
    cause, seen = error, set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno and os.strerror(cause.errno) not in text:
            return f"{os.strerror(cause.errno)} ({text})"
        cause = cause.__cause__ or cause.__context__
    for reason in ("No space left on device", "Permission denied", "Read-only file system", "Disk quota exceeded"):
        if reason in str(error) and reason not in text:
            return f"{reason} ({text})"
    return text


class _QuietTrackedMetric(logging.Filter):
    """orbax logs "Requested `tracked_metric`; did not provide metrics" on every save without a
    validation score (a checkpoint between evaluations): expected here, not worth a warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietTrackedMetric())


def _key_name(key) -> str:
    for attribute in ("key", "idx", "name"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _leaves(state) -> list[tuple[str, object]]:
    """(path, leaf) pairs; paths like `0/embed/position/embedding`, the same whether a level is a
    tuple or a dict keyed "0" (as orbax returns a tree restored without a target)."""
    return [("/".join(_key_name(k) for k in path), leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]]


def checksums(state) -> dict[str, str | None]:
    """{array path: SHA-256 of dtype, shape and bytes}; None for arrays this process cannot read whole."""
    sums = {}
    for name, leaf in _leaves(state):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            sums[name] = None
            continue
        array = np.ascontiguousarray(np.asarray(leaf))
        digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.view(np.uint8).reshape(-1) if array.size else b"")
        sums[name] = digest.hexdigest()
    return sums


def first_non_finite(state) -> str | None:
    """The path of the first floating array holding NaN or infinity, or None."""
    for name, leaf in _leaves(state):
        if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact) and not bool(jnp.isfinite(leaf).all()):
            return name
    return None


def verify_restored(state, meta: dict, step: int, directory) -> None:
    """Raise `CorruptCheckpointError` unless `state`, restored from `step` in `directory`, matches the
    checksums its metadata lists and holds only finite values (for readers that restore without
    `Checkpoints`, e.g. an export)."""
    saved = meta.get("checksums")
    if saved is None:
        raise CorruptCheckpointError(f"checkpoint at step {step} in {directory} has no checksums: it "
                                     "cannot be verified", step)
    restored = checksums(state)
    if set(saved) != set(restored):
        raise CorruptCheckpointError(f"checkpoint at step {step} in {directory} holds other arrays than "
                                     f"its checksums list: {sorted(set(saved) ^ set(restored))[:5]}", step)
    damaged = [name for name, digest in restored.items()
               if digest is not None and saved[name] is not None and digest != saved[name]]
    if damaged:
        raise CorruptCheckpointError(f"checkpoint at step {step} in {directory} is corrupt: "
                                     f"{len(damaged)} array(s) fail their checksum, e.g. {damaged[0]}", step)
    bad = first_non_finite(state)
    if bad is not None:
        raise CorruptCheckpointError(f"checkpoint at step {step} in {directory} holds NaN or infinity in {bad}",
                                     step)


class Checkpoints:
    """Save at the steps the caller asks for, keep the last `keep`; restore the latest good (or a given) step.

    settings: JSON-able training settings saved with each step and compared on restore.
    manager_options: extra `ocp.CheckpointManagerOptions` fields (e.g. best_fn, best_mode) for
        callers that keep checkpoints by another policy; `save(..., metrics=)` feeds them.
    `every` is kept for callers that decide when to save; orbax itself never skips a save here
    (no save interval), so a checkpoint is found whatever `every` a later run passes.
    """

    def __init__(self, directory, *, config_json: str, every: int = 100, keep: int | None = 3,
                 settings: dict | None = None, manager_options: dict | None = None):
        self.directory = pathlib.Path(directory).absolute()
        self.config_json = config_json
        self.settings = json.loads(json.dumps(settings or {}))  # normalized as it will read back
        self.every = every
        self._options = ocp.CheckpointManagerOptions(**{"max_to_keep": keep, "create": True, **(manager_options or {})})
        self.manager = ocp.CheckpointManager(self.directory, options=self._options)

    @property
    def quarantine(self) -> pathlib.Path:
        """Where damaged steps are moved when a restore falls back to an earlier one."""
        return self.directory.with_name(self.directory.name + ".corrupt")

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, extra: dict | None = None, *, metrics: dict | None = None,
             force: bool = False) -> bool:
        """Save `state` (a pytree of arrays) at `step`, with a checksum per array; raises if not written."""
        meta = {"config": json.loads(self.config_json), "settings": self.settings, "step": step,
                "checksums": checksums(state), **(extra or {})}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        try:
            saved = self.manager.save(step, args=args, metrics=metrics, force=force)
            self.manager.wait_until_finished()
        except Exception as error:  # orbax/tensorstore raise many types (disk full, permissions, ...)
            raise CheckpointError(f"saving the checkpoint for step {step} in {self.directory} failed: "
                                  f"{_short(error)}") from error
        if not saved:
            raise CheckpointError(f"the checkpoint for step {step} was not written to {self.directory}: orbax "
                                  f"skipped it (saved steps: {self.all_steps()}); nothing of this run is saved "
                                  "for that step")
        if self.replaced is not None and step in self.all_steps() and self.verify(step, abstract_like(state)):
            self.discard_replaced()  # this run has a checkpoint that reads back whole: the old run may go
        return True

    def _meta(self, step: int) -> dict:
        try:
            return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as error:  # orbax raises many types for unreadable files
            raise CorruptCheckpointError(f"checkpoint at step {step} in {self.directory} is corrupt or unreadable "
                                         f"(metadata): {_short(error)}", step) from error

    def _check_config(self, step: int, meta: dict, allow_setting_changes: bool) -> None:
        differences = _differences(meta.get("config", {}), json.loads(self.config_json))
        if differences:
            raise CheckpointError(f"checkpoint at step {step} in {self.directory} was written for another "
                                  f"model config: " + "; ".join(differences))
        differences = _differences(meta.get("settings", {}), self.settings)
        if differences and not allow_setting_changes:
            raise SettingsMismatchError(
                f"checkpoint at step {step} in {self.directory} was written with other training settings: "
                + "; ".join(differences),
                hint="resume with the saved settings, or accept the change with allow_setting_changes=True",
                cli_hint="resume with the saved settings, or accept the change with --allow-setting-changes")

    def _restore_verified(self, step: int, abstract_state, meta: dict):
        """The state at `step`, its arrays checked against the saved checksums and for finiteness."""
        try:
            state = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state)))["state"]
        except Exception as error:
            raise CorruptCheckpointError(f"checkpoint at step {step} in {self.directory} is corrupt or does not "
                                         f"match the model's parameters: {_short(error)}",
                                         step) from error
        verify_restored(state, meta, step, self.directory)
        return state

    def verify(self, step: int, abstract_state) -> bool:
        """Whether `step` restores into `abstract_state` with every checksum and finiteness check passing."""
        try:
            self._restore_verified(step, abstract_state, self._meta(step))
        except CorruptCheckpointError:
            return False
        return True

    def latest_good_step(self, abstract_state, before: int | None = None) -> int | None:
        """The newest step (below `before`, if given) that verifies; None if none does."""
        for step in reversed(self.all_steps()):
            if (before is None or step < before) and self.verify(step, abstract_state):
                return step
        return None

    def restore(self, abstract_state, step: int | None = None, *, fallback: bool = False,
                allow_setting_changes: bool = False):
        """(state, meta) at `step` (default the latest), verified and checked against this run's config
        and settings. A damaged latest step raises `CorruptCheckpointError` naming the latest good one;
        with `fallback=True` that one is restored instead, with a warning, and the damaged newer steps
        are moved to `self.quarantine`."""
        latest = self.latest_step()
        if latest is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        target = latest if step is None else step
        if target not in self.manager.all_steps():
            raise CheckpointError(f"no checkpoint for step {target} in {self.directory} (saved: {self.all_steps()})")
        try:
            meta = self._meta(target)
            self._check_config(target, meta, allow_setting_changes)
            return self._restore_verified(target, abstract_state, meta), meta
        except CorruptCheckpointError as error:
            if step is not None:
                raise
            good = self.latest_good_step(abstract_state, before=target)
            if good is None:
                raise CorruptCheckpointError(f"{error.message}; no earlier checkpoint verifies", target) from error
            if not fallback:
                moves = f"which moves the damaged steps to {self.quarantine}"
                raise CorruptCheckpointError(
                    f"{error.message}; the latest good checkpoint is step {good}", target, good,
                    hint=f"resume from it with fallback=True, {moves}",
                    cli_hint=f"resume from it with --resume --resume-fallback, {moves}") from error
            warnings.warn(f"{error.message}; restoring the latest good checkpoint, step {good}, instead; damaged steps "
                          f"moved to {self.quarantine}", RuntimeWarning, stacklevel=2)
            self._quarantine_after(good)
            meta = self._meta(good)
            self._check_config(good, meta, allow_setting_changes)
            return self._restore_verified(good, abstract_state, meta), meta

    def _quarantine_after(self, good: int) -> None:
        """Move every step newer than `good` out of the managed folder (kept, never deleted)."""
        self.manager.wait_until_finished()
        self.quarantine.mkdir(parents=True, exist_ok=True)
        for step in self.all_steps():
            if step > good:
                source = self.directory / str(step)
                target = self.quarantine / str(step)
                suffix = 1
                while target.exists():
                    target, suffix = self.quarantine / f"{step}.{suffix}", suffix + 1
                shutil.move(str(source), str(target))
        self.manager.reload()

    def remove_all(self) -> list[int]:
        """Delete every saved step (an explicit overwrite); returns the steps removed."""
        steps = self.all_steps()
        for step in steps:
            self.manager.delete(step)
        self.manager.reload()
        return steps

    # --- overwriting another run: its checkpoints live until this run has saved one -------------
    replaced: pathlib.Path | None = None

    def _asides(self) -> list[pathlib.Path]:
        return sorted(self.directory.parent.glob(f".{self.directory.name}.replaced-*"))

    def move_aside(self) -> list[int]:
        """Move another run's checkpoints out of the way (kept until `discard_replaced`); returns
        their steps. A run killed before its first save leaves them aside: the next overwrite
        adopts them rather than a second, empty folder."""
        steps = self.all_steps()
        asides = self._asides()
        if not steps:
            self.replaced = asides[-1] if asides else None
            return []
        self.manager.close()
        aside = self.directory.with_name(f".{self.directory.name}.replaced-{uuid.uuid4().hex[:8]}")
        self.directory.rename(aside)
        for older in asides:  # an even older run's leftovers: the run moved aside now replaces it
            shutil.rmtree(older, ignore_errors=True)
        self.replaced = aside
        self.manager = ocp.CheckpointManager(self.directory, options=self._options)
        return steps

    def discard_replaced(self) -> None:
        """Delete the replaced run's checkpoints (this run has saved its own, or finished)."""
        if self.replaced is not None:
            shutil.rmtree(self.replaced, ignore_errors=True)
            self.replaced = None

    def put_back_replaced(self) -> bool:
        """Undo `move_aside` when this run saved nothing (it failed): True if the old run is back."""
        if self.replaced is None or self.all_steps() or not self.replaced.exists():
            return False
        self.manager.close()
        shutil.rmtree(self.directory, ignore_errors=True)
        self.replaced.rename(self.directory)
        self.replaced = None
        self.manager = ocp.CheckpointManager(self.directory, options=self._options)
        return True

    def close(self):
        self.manager.close()


def abstract_like(state):
    """ShapeDtypeStructs of `state`, the target orbax restores into."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), state)


__all__ = ["CheckpointError", "Checkpoints", "CorruptCheckpointError", "SettingsMismatchError", "abstract_like",
           "checksums", "first_non_finite", "verify_restored"]
