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


def _report(bound=None):
    rng = np.random.default_rng(0)
    base = 0.70 + 0.01 * rng.standard_normal(6)
    aucs = np.stack([base, base + 0.020, base + 0.050 + 0.001 * rng.standard_normal(6),
                     base + 0.010 + 0.001 * rng.standard_normal(6), base + 0.002 * rng.standard_normal(6)], axis=1)
    rows = build_rows(["baseline", "leak_small", "leak_big", "mllm", "other"],
                      ["baseline", "leak", "leak", "representation", "feature"], aucs, bound=bound)
    return LeakageReport(tuple(rows), {"seeds": 6})


def test_fraction_of_bound_uses_the_largest_lis_or_the_named_leak():
    report = _report()
    assert report.row("mllm").bound == "leak_big"
    np.testing.assert_allclose(report.row("mllm").fraction_of_bound,
                               report.row("mllm").delta / report.row("leak_big").delta)
    named = _report(bound="leak_small")
    np.testing.assert_allclose(named.row("mllm").fraction_of_bound, named.row("mllm").delta / 0.020, rtol=1e-6)
    assert report.row("leak_big").fraction_of_bound is None and report.row("other").fraction_of_bound is None
    with pytest.raises(ValueError, match="not a leak"):
        _report(bound="mllm")


def test_significance_follows_the_interval():
    report = _report()
    assert report.row("leak_big").significant and report.row("mllm").significant
    other = report.row("other")
    assert other.significant == (other.ci_low > 0 or other.ci_high < 0)


def test_renderings(tmp_path):
    report = _report()
    table = report.to_markdown()
    assert table.count("\n") == 2 + len(report.rows) and "leak_big" in table and "(of leak_big)" in table
    data = json.loads(report.to_json())
    assert [r["name"] for r in data["rows"]] == [r.name for r in report.rows]
    assert data["metadata"] == {"seeds": 6}
    path = tmp_path / "lis.png"
    report.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
