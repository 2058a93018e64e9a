"""The LIS / AIS table: per-seed AUCs in, paired statistics and renderings out.

Every feature probe is paired with probes of the same seed (same init of everything they share,
same batch stream), and a delta is the mean of per-seed differences with the paired t interval
over seeds. Two deltas per feature:

- `delta` (the reported LIS / AIS): the feature against its *placebo*, a probe given a random
  feature of the same kind (per item or per interaction), width and per-column scale. An input
  with no information is not free (a per-item random code gives the probe capacity to overfit,
  which cost 0.004 to 0.009 AUC on the simulator); the placebo pays that price too, so this delta
  is the information alone and reads 0 for none.
- `raw_delta`: the feature against the baseline probe without any feature (the paper's definition).

Without a placebo (`leakage_impact(placebo=False)`) `delta` is the raw delta. `significant` means the
95% interval of `delta` excludes 0 (the paper calls +0.0010 AUC significant at its scale; with few
seeds on small data the interval is the honest yardstick). `fraction_of_bound` = AIS / LIS for
representation rows, against one leak row, both controlled deltas.

A row of kind "reference" (`features`, `leakage_impact(reference=True)`) is no LIS / AIS: it is
the production features baseline (`reference.py`), fitted on the same rows, a yardstick for the
probes themselves (a LIS measured with a probe weaker than it is a weak bound). It is deterministic,
so its AUC stands beside every seed and its delta is AUC(reference) - AUC(baseline probe of each
seed), paired like the others: the interval is the baseline probe's spread over seeds, on this eval
window (the eval rows' own sampling error, shared by both, is not in any interval here).
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import scipy.stats

KINDS = ("baseline", "leak", "representation", "feature", "placebo", "reference")


@dataclasses.dataclass(frozen=True)
class LeakageRow:
    """One probe family (a feature, or the baseline) over seeds.

    aucs: per-seed AUC (mean over tasks); delta: mean paired gain over `paired_with` (the
    feature's placebo row, or "baseline" when it has none): LIS for a leak, AIS for a
    representation; ci_low/ci_high: its 95% paired t interval (NaN with one seed); raw_delta,
    raw_ci_low, raw_ci_high: the same against the baseline; fraction_of_bound: AIS / LIS of
    `bound` (representations only, else None). A placebo row's delta is its raw delta: what an
    input without information costs the probe; a reference row's (kind "reference", see the module)
    is its gain over the baseline probe, no LIS / AIS, and its aucs repeat one deterministic AUC.
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
    paired_with: str | None = None  # the row `delta` is measured against (None for the baseline)
    raw_delta: float = 0.0
    raw_ci_low: float = 0.0
    raw_ci_high: float = 0.0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def paired_interval(differences, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the paired t interval of per-seed differences."""
    differences = np.asarray(differences, np.float64)
    mean = float(differences.mean())
    if len(differences) < 2:
        return mean, math.nan, math.nan
    half = (scipy.stats.t.ppf(0.5 + confidence / 2, len(differences) - 1) * differences.std(ddof=1)
            / math.sqrt(len(differences)))
    return mean, mean - float(half), mean + float(half)


def build_rows(names, kinds, aucs, task_aucs=None, task_names=(), bound: str | None = None,
               placebos: dict[str, str] | None = None) -> list[LeakageRow]:
    """Rows from per-probe AUCs.

    names: [F + 1] with names[0] the baseline; kinds: [F + 1] (placebo rows have kind "placebo");
    aucs: [S, F + 1] (seed x probe family); task_aucs: optional [S, F + 1, T]. placebos:
    {feature: its placebo row's name}; those features' `delta` is paired with the placebo, the
    others' with the baseline. bound: the leak whose LIS representations are measured against
    (default: the leak with the largest LIS).
    """
    aucs = np.asarray(aucs, np.float64)
    names = list(names)
    placebos = dict(placebos or {})
    for feature, placebo in placebos.items():
        if feature not in names or placebo not in names:
            raise ValueError(f"placebo pair {feature!r} -> {placebo!r} names a row that is not there")
        if kinds[names.index(placebo)] != "placebo":
            raise ValueError(f"{placebo!r}, the placebo of {feature!r}, is not a placebo row")
    rows = []
    for f, (name, kind) in enumerate(zip(names, kinds)):
        if f == 0:
            delta = low = high = raw = raw_low = raw_high = 0.0
            paired = None
        else:
            raw, raw_low, raw_high = paired_interval(aucs[:, f] - aucs[:, 0])
            paired = placebos.get(name, "baseline")
            delta, low, high = paired_interval(aucs[:, f] - aucs[:, names.index(paired)])
        per_task = None
        if task_aucs is not None:
            per_task = {t: float(np.mean(np.asarray(task_aucs)[:, f, i])) for i, t in enumerate(task_names)}
        significant = bool(f > 0 and not math.isnan(low) and (low > 0 or high < 0))
        rows.append(LeakageRow(name, kind, tuple(float(a) for a in aucs[:, f]), float(aucs[:, f].mean()),
                               float(aucs[:, f].std(ddof=1)) if len(aucs) > 1 else 0.0,
                               float(delta), float(low), float(high), significant, task_aucs=per_task,
                               paired_with=paired, raw_delta=float(raw), raw_ci_low=float(raw_low),
                               raw_ci_high=float(raw_high)))
    leaks = [r for r in rows if r.kind == "leak"]
    if bound is not None and bound not in [r.name for r in leaks]:
        raise ValueError(f"bound {bound!r} is not a leak feature; leaks: {[r.name for r in leaks]}")
    if leaks:
        reference = next(r for r in leaks if r.name == bound) if bound else max(leaks, key=lambda r: r.delta)
        rows = [dataclasses.replace(r, fraction_of_bound=r.delta / reference.delta if reference.delta > 0 else math.nan,
                                    bound=reference.name)
                if r.kind == "representation" else r for r in rows]
    return rows


def _interval(low: float, high: float, digits: int) -> str:
    return "n/a" if math.isnan(low) else f"[{low:+.{digits}f}, {high:+.{digits}f}]"


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

    @property
    def reference(self) -> LeakageRow | None:
        """The reference row (the features baseline), or None when the run had none."""
        return next((r for r in self.rows if r.kind == "reference"), None)

    def to_markdown(self, digits: int = 4) -> str:
        """A markdown table: AUC mean +- std; the reported delta (LIS / AIS, against the row named
        in "vs") with its 95% interval; the raw delta against the baseline with its interval;
        fraction of bound. A reference row shows its one AUC and its delta vs the baseline probe
        (no raw columns: the same figure), and a note under the table says it is no LIS / AIS."""
        lines = ["| feature | kind | AUC (mean ± std) | Δ AUC (LIS / AIS) | 95% CI | significant | vs "
                 "| raw Δ vs baseline | raw 95% CI | AIS / LIS |",
                 "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in self.rows:
            auc = f"{r.auc_mean:.{digits}f} ± {r.auc_std:.{digits}f}"
            if r.kind == "baseline":
                delta = ci = sig = vs = raw = raw_ci = "—"
            elif r.kind == "reference":
                auc = f"{r.auc_mean:.{digits}f} (no seeds)"
                delta = f"{r.delta:+.{digits}f}"
                ci = _interval(r.ci_low, r.ci_high, digits)
                sig = "yes" if r.significant else "no"
                vs, raw, raw_ci = "baseline probe (not an LIS)", "—", "—"
            else:
                delta = f"{r.delta:+.{digits}f}"
                ci = _interval(r.ci_low, r.ci_high, digits)
                sig = "yes" if r.significant else "no"
                vs = r.paired_with or "baseline"
                raw = f"{r.raw_delta:+.{digits}f}"
                raw_ci = _interval(r.raw_ci_low, r.raw_ci_high, digits)
            fraction = "" if r.fraction_of_bound is None else f"{r.fraction_of_bound:.2f} (of {r.bound})"
            lines.append(f"| {r.name} | {r.kind} | {auc} | {delta} | {ci} "
                         f"| {sig} | {vs} | {raw} | {raw_ci} | {fraction} |")
        if self.reference is not None:
            lines += ["", f"{self.reference.name} (reference): the production features baseline, a logistic regression "
                          "on point-in-time item and user rates, counts and recency, fitted on the probes' train rows; "
                          "not an LIS / AIS. Its Δ is its AUC minus the baseline probe's of each seed: below 0, the "
                          "probes rank better than it; above 0, they rank worse and their LIS is a weak bound."]
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
        """Bars of each feature's reported delta (solid, against its placebo) and raw delta
        (hatched, against the baseline), each with its 95% interval; PNG (matplotlib Agg). The
        reference row is no LIS / AIS and gets no bar: its AUC is in the title."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [r for r in self.rows if r.kind not in ("baseline", "reference")]
        colors = {"leak": "#c0392b", "representation": "#2471a3", "feature": "#7f8c8d", "placebo": "#b7950b"}

        def bars(values, lows, highs):
            values = np.array(values)
            below = np.array([v - lo if not math.isnan(lo) else 0.0 for v, lo in zip(values, lows)])
            above = np.array([hi - v if not math.isnan(hi) else 0.0 for v, hi in zip(values, highs)])
            return values, np.stack([below, above])

        fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(rows) + 2), 3.8), dpi=120)
        x = np.arange(len(rows))
        color = [colors.get(r.kind, "#7f8c8d") for r in rows]
        width = 0.38
        values, errors = bars([r.delta for r in rows], [r.ci_low for r in rows], [r.ci_high for r in rows])
        ax.bar(x - width / 2, values, width, color=color, yerr=errors, capsize=3, label="Δ vs placebo (LIS / AIS)")
        values, errors = bars([r.raw_delta for r in rows], [r.raw_ci_low for r in rows], [r.raw_ci_high for r in rows])
        ax.bar(x + width / 2, values, width, color=color, alpha=0.45, hatch="//", yerr=errors, capsize=3,
               label="raw Δ vs baseline")
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(x, [r.name for r in rows], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("Δ AUC (95% CI)")
        ax.legend(fontsize=7)
        title = f"LIS / AIS (baseline AUC {self.baseline.auc_mean:.4f}, {len(self.baseline.aucs)} seeds)"
        reference = self.reference
        if reference is not None:
            title += f"\nreference {reference.name} AUC {reference.auc_mean:.4f} ({reference.delta:+.4f} vs baseline)"
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(path, format="png")
        plt.close(fig)
