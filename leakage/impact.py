"""`leakage_impact`: LIS of leaked features and AIS of representations, with intervals over seeds."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from genrank_jax import metrics
from genrank_jax.leakage import bank
from genrank_jax.leakage import devices as devices_lib
from genrank_jax.leakage.log import InteractionLog
from genrank_jax.leakage.placebo import placebos_for
from genrank_jax.leakage.probe import ProbeConfig
from genrank_jax.leakage.reference import L2, column_names, reference_logits
from genrank_jax.leakage.reference import NAME as REFERENCE
from genrank_jax.leakage.report import LeakageReport, build_rows

_KINDS = ("leak", "representation")


def probe_aucs(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[K, T] exact AUC of each probe on each task; logits [K, Ne, T], labels [Ne, T]."""
    return np.array([[metrics.auc(labels[:, t], logits[k, :, t]) for t in range(labels.shape[1])]
                     for k in range(logits.shape[0])])


def leakage_impact(log: InteractionLog, *, cutoff: float, eval_end: float | None = None,
                   features: dict, seeds: int = 8, probe: ProbeConfig = ProbeConfig(), parallel: bool = True,
                   kinds: dict[str, str] | None = None, bound: str | None = None, strategy: str = "auto",
                   placebo: bool = True, reference: bool = True, progress=None) -> LeakageReport:
    """Train probes with and without each feature; report AUC, delta (LIS / AIS) and intervals.

    Probes train on the rows with timestamp < cutoff and are evaluated on cutoff <= t < eval_end
    (default: to the end of the log). Each feature (per-item [num_items, d], per-interaction [N, d],
    or a `bank.Feature`) gets `seeds` probes. placebo=True (the default): each feature's delta is
    paired by seed with a placebo probe given a random feature of its shape (`placebo.py`; one
    placebo per shape, reported as rows of kind "placebo"), and the raw delta against the baseline
    probe stands beside it; placebo=False pairs the delta with the baseline alone (fewer probes).
    kinds: {feature: "leak" | "representation"}; unnamed features are "feature". With both kinds
    present a representation's `fraction_of_bound` is its AIS over the LIS of `bound` (default:
    the leak with the largest LIS: the tightest known bound on what that data can teach).
    parallel: one bank for all probes (True) or the same probes one at a time; strategy: how the
    bank runs its probe axis ("auto", "vmap", "map"; see `bank.resolve_strategy`).
    progress: optional callable(done, total) called after each epoch of training.
    """
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    kinds = dict(kinds or {})
    unknown = set(kinds) - set(features)
    if unknown:
        raise ValueError(f"kinds names features that were not given: {sorted(unknown)}")
    bad = {name: kind for name, kind in kinds.items() if kind not in _KINDS}
    if bad:
        raise ValueError(f"kinds must be 'leak' or 'representation', got {bad}")
    if "baseline" in features:
        raise ValueError("'baseline' is reserved for the probe without a feature")
    if reference and REFERENCE in features:
        raise ValueError(f"{REFERENCE!r} is the reference row's name: name the feature otherwise, or pass "
                         "reference=False")
    eval_end = np.inf if eval_end is None else float(eval_end)
    if not eval_end > cutoff:
        raise ValueError(f"eval_end ({eval_end}) must be after cutoff ({cutoff})")
    train_rows = log.rows_between(None, cutoff)
    eval_rows = log.rows_between(cutoff, eval_end)
    if len(eval_rows) == 0:
        raise ValueError(f"no interactions in the eval window [{cutoff}, {eval_end})")
    prepared = {name: bank.as_feature(name, values, log) for name, values in features.items()}
    reference_aucs, reference_seconds = None, None
    if reference:  # first: seconds, and its temporaries are gone before the probes' arrays arrive
        started = time.perf_counter()
        reference_aucs = probe_aucs(reference_logits(log, train_rows, eval_rows)[None], log.labels[eval_rows])[0]
        reference_seconds = time.perf_counter() - started
    start = time.perf_counter()
    placebos, pairs = placebos_for(prepared) if placebo else ({}, {})
    run = bank.prepare_run(log, train_rows, eval_rows, {**prepared, **placebos}, probe)
    # the probes read the features from the run now; the host copies can go (a large log's
    # per-interaction features are 640 MB each; the caller may still hold its own)
    feature_names, placebo_names = tuple(prepared), tuple(placebos)
    widths = {name: prepared[name].width for name in prepared}
    sides = {name: prepared[name].per for name in prepared}
    del prepared, placebos, features
    names = ("baseline",) + run.feature_names
    families = len(names)
    seed_of = np.repeat(np.arange(seeds), families)
    slot_of = np.tile(np.arange(families), seeds)
    groups = len(bank.probe_groups(run, len(slot_of), strategy)) if probe.model == "mlp" else 1
    total = probe.epochs * (groups if parallel else len(slot_of))
    done = [0]

    def on_epoch(_):
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    logits = bank.train_and_predict(run, seed_of, slot_of, parallel=parallel, strategy=strategy, on_epoch=on_epoch)
    task_aucs = probe_aucs(logits, run.eval_labels).reshape(seeds, families, -1)  # [S, F+1, T]
    with np.errstate(all="ignore"):
        aucs = np.nanmean(task_aucs, axis=-1)
    if np.isnan(aucs).any():
        raise ValueError("the eval window has a single label class on every task: AUC is undefined")
    row_kinds = ["baseline"] + [kinds.get(name, "placebo" if name in placebo_names else "feature")
                                for name in run.feature_names]
    # report rows in the caller's feature order, then the placebos (the bank groups slots by side)
    order = [0] + [1 + run.feature_names.index(name) for name in (*feature_names, *placebo_names)]
    names = tuple(names[i] for i in order)
    row_kinds = [row_kinds[i] for i in order]
    aucs, task_aucs = aucs[:, order], task_aucs[:, order]
    if reference:  # deterministic: the same AUC beside every seed, so its delta pairs with each baseline probe
        names, row_kinds = names + (REFERENCE,), row_kinds + ["reference"]
        with np.errstate(all="ignore"):
            mean = np.nanmean(reference_aucs)
        aucs = np.concatenate([aucs, np.full((seeds, 1), mean)], axis=1)
        task_aucs = np.concatenate([task_aucs, np.broadcast_to(reference_aucs, (seeds, 1, len(reference_aucs)))],
                                   axis=1)
    rows = build_rows(names, row_kinds, aucs, task_aucs, log.task_names, bound=bound, placebos=pairs)
    metadata = {
        "cutoff": float(cutoff), "eval_end": None if np.isinf(eval_end) else eval_end,
        "train_rows": int(len(train_rows)), "eval_rows": int(len(eval_rows)), "seeds": int(seeds),
        "tasks": list(log.task_names), "probes": int(len(slot_of)), "parallel": bool(parallel),
        # the control's cost: these probes are trained only for the placebos
        "placebos": pairs, "placebo_probes": int(len(placebo_names) * seeds),
        "probe_groups": int(groups) if parallel else None,  # > 1: the bank trained its probes in groups
        "strategy": bank.resolve_strategy(strategy), "probe": dataclasses.asdict(run.config),  # "auto" resolved
        "devices": (len(devices_lib.layout(len(slot_of) if parallel else 1, bank.resolve_strategy(strategy)).devices)
                    if probe.model == "mlp" else 1),  # the GenRank probe runs on one device
        "feature_widths": widths, "feature_per": sides,
        "reference": None if not reference else {
            "name": REFERENCE, "model": "logistic regression per task on point-in-time aggregates", "l2": L2,
            "columns": list(column_names(log.task_names)), "seconds": reference_seconds},
        "seconds": time.perf_counter() - start,
    }
    return LeakageReport(tuple(rows), metadata)
