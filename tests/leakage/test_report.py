"""Report statistics and renderings, on hand-made per-seed AUCs."""

import json
import math

import numpy as np
import pytest

from genrank_jax.leakage.report import LeakageReport, build_rows, paired_interval


def test_paired_interval_is_the_t_interval_of_differences():
    diffs = np.array([0.010, 0.012, 0.007, 0.011, 0.009])
    mean, low, high = paired_interval(diffs)
    half = 2.7764451051977987 * diffs.std(ddof=1) / math.sqrt(5)  # t(0.975, 4)
    np.testing.assert_allclose([mean, low, high], [diffs.mean(), diffs.mean() - half, diffs.mean() + half], rtol=1e-9)
    assert all(math.isnan(v) for v in paired_interval([0.01])[1:])


def _report(bound=None, placebos=None):
    rng = np.random.default_rng(0)
    base = 0.70 + 0.01 * rng.standard_normal(6)
    aucs = np.stack([base, base + 0.020, base + 0.050 + 0.001 * rng.standard_normal(6),
                     base + 0.010 + 0.001 * rng.standard_normal(6), base + 0.002 * rng.standard_normal(6),
                     base - 0.006 + 0.001 * rng.standard_normal(6)], axis=1)
    rows = build_rows(["baseline", "leak_small", "leak_big", "mllm", "other", "placebo[item,4]"],
                      ["baseline", "leak", "leak", "representation", "feature", "placebo"], aucs, bound=bound,
                      placebos=placebos)
    return LeakageReport(tuple(rows), {"seeds": 6})


def test_deltas_are_paired_with_the_placebo_and_raw_deltas_with_the_baseline():
    report = _report(placebos={"leak_small": "placebo[item,4]", "mllm": "placebo[item,4]"})
    aucs = {r.name: np.array(r.aucs) for r in report.rows}
    for name in ("leak_small", "mllm"):
        row = report.row(name)
        assert row.paired_with == "placebo[item,4]"
        np.testing.assert_allclose([row.delta, row.ci_low, row.ci_high],
                                   paired_interval(aucs[name] - aucs["placebo[item,4]"]), rtol=1e-12)
        np.testing.assert_allclose([row.raw_delta, row.raw_ci_low, row.raw_ci_high],
                                   paired_interval(aucs[name] - aucs["baseline"]), rtol=1e-12)
        assert row.delta > row.raw_delta + 0.005  # the placebo scores below the baseline here
    # a feature without a placebo, and the placebo itself, are measured against the baseline
    for name in ("leak_big", "placebo[item,4]"):
        row = report.row(name)
        assert row.paired_with == "baseline" and row.delta == row.raw_delta
    placebo = report.row("placebo[item,4]")
    assert placebo.kind == "placebo" and placebo.significant and placebo.delta < 0
    # the bound is read from the controlled deltas
    np.testing.assert_allclose(report.row("mllm").fraction_of_bound,
                               report.row("mllm").delta / report.row("leak_big").delta)
    with pytest.raises(ValueError, match="not a placebo row"):
        _report(placebos={"mllm": "other"})
    with pytest.raises(ValueError, match="not there"):
        _report(placebos={"mllm": "placebo[item,9]"})


def test_fraction_of_bound_uses_the_largest_lis_or_the_named_leak():
    report = _report()
    assert report.row("mllm").bound == "leak_big"
    np.testing.assert_allclose(report.row("mllm").fraction_of_bound,
                               report.row("mllm").delta / report.row("leak_big").delta)
    named = _report(bound="leak_small")
    np.testing.assert_allclose(named.row("mllm").fraction_of_bound, named.row("mllm").delta / 0.020, rtol=1e-6)
    assert report.row("leak_big").fraction_of_bound is None and report.row("other").fraction_of_bound is None
    assert report.row("placebo[item,4]").fraction_of_bound is None
    with pytest.raises(ValueError, match="not a leak"):
        _report(bound="mllm")


def test_significance_follows_the_interval():
    report = _report()
    assert report.row("leak_big").significant and report.row("mllm").significant
    other = report.row("other")
    assert other.significant == (other.ci_low > 0 or other.ci_high < 0)


def test_renderings(tmp_path):
    report = _report(placebos={"mllm": "placebo[item,4]"})
    table = report.to_markdown()
    assert table.count("\n") == 2 + len(report.rows) and "leak_big" in table and "(of leak_big)" in table
    mllm = report.row("mllm")
    line = next(line for line in table.splitlines() if line.startswith("| mllm |"))
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[3] == f"{mllm.delta:+.4f}" and cells[6] == "placebo[item,4]" and cells[7] == f"{mllm.raw_delta:+.4f}"
    assert cells[8] == f"[{mllm.raw_ci_low:+.4f}, {mllm.raw_ci_high:+.4f}]"
    data = json.loads(report.to_json())
    assert [r["name"] for r in data["rows"]] == [r.name for r in report.rows]
    by_name = {r["name"]: r for r in data["rows"]}
    assert by_name["mllm"]["raw_delta"] == mllm.raw_delta and by_name["mllm"]["paired_with"] == "placebo[item,4]"
    assert data["metadata"] == {"seeds": 6}
    path = tmp_path / "lis.png"
    report.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
