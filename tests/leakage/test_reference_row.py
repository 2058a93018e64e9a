"""The `features` reference row of the LIS report: there by default, leaving every other row as it
was, rendered as no LIS / AIS; `genrank-jax lis --no-reference` leaves it out."""

import json

import numpy as np
import pytest

from genrank_jax import metrics
from genrank_jax.cli import main
from genrank_jax.data.synthetic import SimulatorConfig, simulate
from genrank_jax.leakage import InteractionLog, ProbeConfig, leakage_impact
from genrank_jax.leakage.reference import reference_logits

PROBE = ProbeConfig(batch_size=256, epochs=2)
SEEDS = 3


@pytest.fixture(scope="module")
def reports():
    """(with the reference, without it, the log, cutoff): the same probes, seeds and features."""
    log = InteractionLog.from_dataset(simulate(SimulatorConfig.preset("tests", seed=6)).dataset)
    cutoff = float(np.quantile(log.timestamp, 0.8))
    features = {"random": np.random.default_rng(106).standard_normal((log.num_items, 4))}
    run = dict(cutoff=cutoff, features=features, seeds=SEEDS, probe=PROBE, kinds={"random": "representation"})
    return leakage_impact(log, **run), leakage_impact(log, reference=False, **run), log, cutoff


def test_the_reference_row_leaves_every_other_row_as_it_was(reports):
    with_reference, without, _, _ = reports
    assert [r.kind for r in with_reference.rows] == [r.kind for r in without.rows] + ["reference"]
    assert with_reference.rows[:-1] == without.rows  # same seeds: identical probe AUCs, deltas, pairings
    assert without.reference is None and without.metadata["reference"] is None
    assert with_reference.metadata["probes"] == without.metadata["probes"]


def test_the_reference_row_is_the_fitted_features_baseline_against_each_seeds_baseline_probe(reports):
    report, _, log, cutoff = reports
    row = report.row("features")
    assert row is report.reference and row.kind == "reference" and row.paired_with == "baseline"
    evaluated = log.rows_between(cutoff, None)
    logits = reference_logits(log, log.rows_between(None, cutoff), evaluated)
    per_task = [metrics.auc(log.labels[evaluated, t], logits[:, t]) for t in range(log.num_tasks)]
    np.testing.assert_allclose(row.aucs, [np.mean(per_task)] * SEEDS, rtol=1e-12)
    np.testing.assert_allclose(list(row.task_aucs.values()), per_task, rtol=1e-12)
    assert np.isfinite(row.auc_mean) and row.auc_mean > 0.5
    differences = np.subtract(row.aucs, report.baseline.aucs)
    np.testing.assert_allclose(row.delta, differences.mean(), rtol=1e-12)
    assert row.ci_low < row.delta < row.ci_high and row.fraction_of_bound is None
    assert report.metadata["reference"]["columns"][0] == "item_click_rate"


def test_renderings_say_the_reference_is_no_lis(reports, tmp_path, monkeypatch):
    report = reports[0]
    row = report.reference
    table = report.to_markdown()
    line = next(line for line in table.splitlines() if line.startswith("| features |"))
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[1] == "reference" and cells[2] == f"{row.auc_mean:.4f} (no seeds)"
    assert cells[3] == f"{row.delta:+.4f}" and cells[6] == "baseline probe (not an LIS)" and cells[7] == "—"
    assert "not an LIS / AIS" in table.split(line, 1)[1]  # the note under the table
    data = json.loads(report.to_json())
    assert data["rows"][-1]["name"] == "features" and data["rows"][-1]["kind"] == "reference"
    import matplotlib.pyplot as plt

    drawn = []
    monkeypatch.setattr(plt, "close", drawn.append)  # keep the figure to read it back
    report.plot(tmp_path / "lis.png")
    assert (tmp_path / "lis.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axes = drawn[0].axes[0]
    # bars are LIS / AIS deltas: the reference has none, its AUC is in the title
    assert [label.get_text() for label in axes.get_xticklabels()] == [
        r.name for r in report.rows if r.kind not in ("baseline", "reference")]
    assert f"reference features AUC {row.auc_mean:.4f}" in axes.get_title()
    monkeypatch.undo()
    plt.close(drawn[0])


def test_a_feature_may_not_take_the_reference_rows_name(reports):
    log, cutoff = reports[2], reports[3]
    with pytest.raises(ValueError, match="reference=False"):
        leakage_impact(log, cutoff=cutoff, features={"features": np.zeros((log.num_items, 2))}, seeds=1, probe=PROBE)


FAST = ["--data", "synthetic:tests", "--seeds", "2", "--leaks", "next_item", "--horizon", "7d", "--no-progress",
        "--sequential"]


@pytest.mark.parametrize("flags, expected", [([], True), (["--no-reference"], False)])
def test_cli_passes_the_reference_choice_and_its_dry_run_says_so(flags, expected, tmp_path, capsys, monkeypatch):
    from genrank_jax.errors import GenRankError
    from genrank_jax.leakage import cli as lis_cli

    seen = {}

    def stop(*args, **kwargs):
        seen.update(kwargs)
        raise GenRankError("stopped before training")

    monkeypatch.setattr(lis_cli, "leakage_impact", stop)
    assert main(["lis", *FAST, *flags, "--out", str(tmp_path / "r")]) == 2
    assert seen["reference"] is expected
    capsys.readouterr()
    assert main(["lis", *FAST, *flags, "--dry-run", "--out", str(tmp_path / "dry")]) == 0
    assert ("'features' reference row" in capsys.readouterr().out) is expected


def test_cli_refuses_a_feature_named_like_the_reference_before_the_data_loads(tmp_path, capsys, monkeypatch):
    from genrank_jax.data import sources

    monkeypatch.setattr(sources, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    np.save(tmp_path / "ok.npy", np.random.default_rng(1).normal(size=(4, 2)).astype(np.float32))
    assert main(["lis", *FAST, "--features", f"features={tmp_path / 'ok.npy'}", "--out", str(tmp_path / "r")]) == 2
    assert "--no-reference" in capsys.readouterr().err
