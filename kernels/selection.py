"""How `impl=None` picks a backend: the platform's preferences, each self-checked before first use.

For an (op, device kind, dtype) the first time in a process, `choose` walks
`backends.preferences(op, platform)`: a backend that cannot run here or takes no such dtype is passed
over (as always: that is expected, e.g. Mosaic GPU on an Ampere card); one that can run is
self-checked (`self_check.check`) and chosen if it passes. One that fails (raises, or differs from
the reference) is passed over too, and that is the one fallback that is not silent: a single
`BackendSelfCheckWarning` per choice names each failed backend, its failure and what was used
instead. The op's reference is the last resort and, on a CPU, the only choice (nothing is checked).
Choices and check results are kept for the life of the process; `backend_report()` lists them.
A backend the caller names (`impl="pallas_triton"`) never comes through here: never checked, never
replaced.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import warnings
from typing import Any, Literal

import jax
import jax.numpy as jnp

from genrank_jax.kernels import backends, self_check

Verdict = Literal["passed", "failed", "unavailable", "skipped"]


class BackendSelfCheckWarning(RuntimeWarning):
    """A preferred backend failed its self-check; `impl=None` fell back to the next preference."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What happened to one preferred backend while choosing."""

    backend: str
    verdict: Verdict
    detail: str = ""  # why it was unavailable or skipped, or how its check failed
    seconds: float = 0.0  # the check's wall time (0 when it was not run, or ran for an earlier choice)


@dataclasses.dataclass(frozen=True)
class Selection:
    """The backend `impl=None` uses for one op on one device kind and input dtype."""

    op: backends.Op
    platform: str
    device_kind: str
    dtype: str  # "any" when the caller gave none
    chosen: str
    outcomes: tuple[Outcome, ...]

    def __str__(self) -> str:
        head = f"{self.op} on {self.platform} ({self.device_kind}), {self.dtype}: {self.chosen}"
        if not self.outcomes:
            return (f"{head} (the XLA reference: no backend is preferred on {self.platform}, "
                    "so nothing was checked)")
        lines = [head]
        for outcome in self.outcomes:
            timing = f" in {outcome.seconds:.2f} s" if outcome.seconds else ""
            detail = f": {outcome.detail}" if outcome.detail else ""
            lines.append(f"  {outcome.backend}: {outcome.verdict}{timing}{detail}")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class BackendReport:
    """Every choice `impl=None` made in this process, for the default device."""

    platform: str
    device_kind: str
    selections: tuple[Selection, ...]

    def __str__(self) -> str:
        if self.selections:
            return "\n".join(str(selection) for selection in self.selections)
        plans = "; ".join(
            f"{op}: {' then '.join((*backends.preferences(op, self.platform), backends.REFERENCE))}"
            for op in backends.OPS)
        note = " (the XLA reference, never checked)" if not any(
            backends.preferences(op, self.platform) for op in backends.OPS) else ""
        return (f"no impl=None choice made yet in this process on {self.platform} ({self.device_kind}); "
                f"it would try {plans}{note}")


_LOCK = threading.Lock()  # two threads tracing at once still check a backend only once
_SELECTIONS: dict[tuple[str, str, str, str], Selection] = {}
_CHECKS: dict[tuple[str, str, str, str, str], tuple[str | None, float]] = {}


def choose(op: backends.Op, dtype: Any = None) -> str:
    """The backend name `impl=None` uses for `op` on the default device with `dtype` inputs."""
    device = jax.devices()[0]
    dtype_name = "any" if dtype is None else jnp.dtype(dtype).name
    key = (op, device.platform, device.device_kind, dtype_name)
    with _LOCK:
        if key not in _SELECTIONS:
            selection = _select(op, device, dtype, dtype_name)
            _SELECTIONS[key] = selection
            _warn_of_failures(selection)
        return _SELECTIONS[key].chosen


def backend_report(*, show: bool = False) -> BackendReport:
    """What `impl=None` checked and chose in this process, per op, device kind and dtype.

    `show=True` also prints it."""
    device = jax.devices()[0]
    with _LOCK:
        selections = tuple(_SELECTIONS.values())
    report = BackendReport(device.platform, device.device_kind, selections)
    if show:
        print(report)
    return report


def forget() -> None:
    """Drop every choice and check result, so the next `impl=None` checks afresh (tests use this)."""
    with _LOCK:
        _SELECTIONS.clear()
        _CHECKS.clear()


def _select(op: backends.Op, device, dtype: Any, dtype_name: str) -> Selection:
    outcomes: list[Outcome] = []
    chosen = backends.REFERENCE
    for name in backends.preferences(op, device.platform):
        backend = backends.lookup(op, name)
        if backend is None:
            raise ValueError(f"backends.PREFERENCES[{op!r}][{device.platform!r}] names {name!r}, "
                             f"which the {op} op does not have; it has {backends.names(op)}")
        if dtype is not None and not backend.accepts(dtype):
            outcomes.append(Outcome(name, "skipped", f"takes no {dtype_name} inputs"))
            continue
        reason = backend.unavailable_reason(interpret=False)
        if reason is not None:
            outcomes.append(Outcome(name, "unavailable", reason))
            continue
        failure, seconds = _checked(backend, device, dtype)
        if failure is not None:
            outcomes.append(Outcome(name, "failed", failure, seconds))
            continue
        outcomes.append(Outcome(name, "passed", "", seconds))
        chosen = name
        break
    return Selection(op, device.platform, device.device_kind, dtype_name, chosen, tuple(outcomes))


def _checked(backend: backends.Backend, device, dtype: Any) -> tuple[str | None, float]:
    """The self-check's failure (None: passed) and wall time, run at most once per process."""
    if dtype is None:  # no dtype given: check the one the backend would most likely see
        dtype = jnp.float32 if backend.accepts(jnp.float32) else jnp.bfloat16
    key = (backend.op, backend.name, device.platform, device.device_kind, jnp.dtype(dtype).name)
    if key in _CHECKS:
        return _CHECKS[key][0], 0.0
    start = time.perf_counter()
    failure = self_check.check(backend, dtype)
    _CHECKS[key] = (failure, time.perf_counter() - start)
    return _CHECKS[key]


def _warn_of_failures(selection: Selection) -> None:
    failed = [outcome for outcome in selection.outcomes if outcome.verdict == "failed"]
    if not failed:
        return
    failures = "; ".join(f"{outcome.backend} failed its self-check ({outcome.detail})" for outcome in failed)
    warnings.warn(
        f"{selection.op} op on {selection.device_kind} with {selection.dtype} inputs: {failures}; "
        f"impl=None uses {selection.chosen} instead (genrank_jax.kernels.backend_report() lists "
        "every check; naming a backend with impl=... skips the check)",
        BackendSelfCheckWarning, stacklevel=3)
