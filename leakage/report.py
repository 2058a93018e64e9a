"""The LIS / AIS table: per-seed AUCs in, paired statistics and renderings out.

Every feature probe is paired with the baseline probe of the same seed (same init of everything
they share, same batch stream), so `delta` is the mean of per-seed differences and its interval is
the paired t interval over seeds. `significant` means the 95% interval excludes 0 (the paper calls
+0.0010 AUC significant at its scale; with few seeds on small data the interval is the honest
yardstick). `fraction_of_bound` = AIS / LIS for representation rows, against one leak row.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import scipy.stats

KINDS = ("baseline", "leak", "representation", "feature")


@dataclasses.dataclass(frozen=True)
class LeakageRow:
    """One probe family (a feature, or the baseline) over seeds.

    aucs: per-seed AUC (mean over tasks); delta: mean paired gain over the baseline (LIS for a
    leak, AIS for a representation); ci_low/ci_high: its 95% paired t interval (NaN with one seed);
    fraction_of_bound: AIS / LIS of `bound` (representations only, else None).
    """

    name: str
    kind: str
    aucs: tuple[float, ...]
    auc_mean: float
    auc_std: float
    delta: float
    ci_low: float
    ci_high: float
    significant: bool
    fraction_of_bound: float | None = None
    bound: str | None = None
    task_aucs: dict[str, float] | None = None  # per-task AUC means

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def paired_interval(differences, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the paired t interval of per-seed differences."""
    differences = np.asarray(differences, np.float64)
    mean = float(differences.mean())
    if len(differences) < 2:
        return mean, math.nan, math.nan
    half = scipy.stats.t.ppf(0.5 + confidence / 2, len(differences) - 1) * differences.std(ddof=1) / math.sqrt(len(differences))
    return mean, mean - float(half), mean + float(half)


def build_rows(names, kinds, aucs, task_aucs=None, task_names=(), bound: str | None = None) -> list[LeakageRow]:
    """Rows from per-probe AUCs.

    names: [F + 1] with names[0] the baseline; kinds: [F + 1]; aucs: [S, F + 1] (seed x probe family);
    task_aucs: optional [S, F + 1, T]. bound: the leak whose LIS representations are measured
    against (default: the leak with the largest LIS).
    """
    aucs = np.asarray(aucs, np.float64)
    rows = []
    for f, (name, kind) in enumerate(zip(names, kinds)):
        if f == 0:
            delta, low, high = 0.0, 0.0, 0.0
        else:
            delta, low, high = paired_interval(aucs[:, f] - aucs[:, 0])
        per_task = None
        if task_aucs is not None:
            per_task = {t: float(np.mean(np.asarray(task_aucs)[:, f, i])) for i, t in enumerate(task_names)}
        significant = bool(f > 0 and not math.isnan(low) and (low > 0 or high < 0))
        rows.append(LeakageRow(name, kind, tuple(float(a) for a in aucs[:, f]), float(aucs[:, f].mean()),
                               float(aucs[:, f].std(ddof=1)) if len(aucs) > 1 else 0.0,
                               float(delta), float(low), float(high), significant, task_aucs=per_task))
    leaks = [r for r in rows if r.kind == "leak"]
    if bound is not None and bound not in [r.name for r in leaks]:
        raise ValueError(f"bound {bound!r} is not a leak feature; leaks: {[r.name for r in leaks]}")
    if leaks:
        reference = next(r for r in leaks if r.name == bound) if bound else max(leaks, key=lambda r: r.delta)
        rows = [dataclasses.replace(r, fraction_of_bound=(r.delta / reference.delta if reference.delta > 0 else math.nan),
                                    bound=reference.name) if r.kind == "representation" else r for r in rows]
    return rows


@dataclasses.dataclass(frozen=True)
class LeakageReport:
    """LIS / AIS of a set of features; `metadata` records the run (cutoff, window, probe, timing)."""

    rows: tuple[LeakageRow, ...]
    metadata: dict

    def row(self, name: str) -> LeakageRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no row {name!r}; rows: {[r.name for r in self.rows]}")

    @property
    def baseline(self) -> LeakageRow:
        return self.rows[0]

    def to_markdown(self, digits: int = 4) -> str:
        """A markdown table: AUC mean +- std, delta (LIS/AIS) with its 95% interval, fraction of bound."""
        lines = ["| feature | kind | AUC (mean ± std) | Δ AUC (LIS / AIS) | 95% CI | significant | AIS / LIS |",
                 "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in self.rows:
            if r.kind == "baseline":
                delta = ci = sig = "—"
            else:
                delta = f"{r.delta:+.{digits}f}"
                ci = "n/a" if math.isnan(r.ci_low) else f"[{r.ci_low:+.{digits}f}, {r.ci_high:+.{digits}f}]"
                sig = "yes" if r.significant else "no"
            fraction = "" if r.fraction_of_bound is None else f"{r.fraction_of_bound:.2f} (of {r.bound})"
            lines.append(f"| {r.name} | {r.kind} | {r.auc_mean:.{digits}f} ± {r.auc_std:.{digits}f} | {delta} | {ci} "
                         f"| {sig} | {fraction} |")
        return "\n".join(lines) + "\n"

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text: {"rows": [...], "metadata": {...}} (NaN written as null)."""
        def clean(value):
            if isinstance(value, float) and math.isnan(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            if isinstance(value, np.generic):
                return clean(value.item())
            return value
        return json.dumps(clean({"rows": [r.as_dict() for r in self.rows], "metadata": self.metadata}), indent=indent)

    def plot(self, path) -> None:
        """Bar chart of each feature's delta with its 95% interval, written as PNG (matplotlib Agg)."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [r for r in self.rows if r.kind != "baseline"]
        colors = {"leak": "#c0392b", "representation": "#2471a3", "feature": "#7f8c8d"}
        fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(rows) + 2), 3.6), dpi=120)
        x = np.arange(len(rows))
        deltas = np.array([r.delta for r in rows])
        low = np.array([r.delta - r.ci_low if not math.isnan(r.ci_low) else 0.0 for r in rows])
        high = np.array([r.ci_high - r.delta if not math.isnan(r.ci_high) else 0.0 for r in rows])
        ax.bar(x, deltas, color=[colors.get(r.kind, "#7f8c8d") for r in rows], yerr=np.stack([low, high]), capsize=4)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(x, [r.name for r in rows], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("Δ AUC vs baseline (95% CI)")
        ax.set_title(f"LIS / AIS (baseline AUC {self.baseline.auc_mean:.4f}, {len(self.baseline.aucs)} seeds)", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, format="png")
        plt.close(fig)
