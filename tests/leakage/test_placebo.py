"""Placebo control: one random feature per shape, and on the simulator, no information reads zero.

On independent simulator draws (not draw 0, which test_simulator_lis.py uses), one bank per draw
scores the true item factors, a noisy copy, a per-item feature of pure noise and a per-interaction
one. Observed on draws 0 to 6 (3 epochs, 8 seeds): the item noise's controlled interval contained 0
on all seven (its raw delta -0.002 to -0.009); the interaction noise's controlled delta stayed
within 0.0032 of 0 (raw -0.010 to -0.020; its interval missed 0 once, by 0.0002, as a 95% interval
may); true minus noisy was +0.001 to +0.029.
"""

import numpy as np
import pytest

from genrank_jax.data.synthetic import SimulatorConfig, simulate
from genrank_jax.leakage import Feature, InteractionLog, ProbeConfig, leakage_impact
from genrank_jax.leakage.bank import standardized
from genrank_jax.leakage.placebo import placebos_for

DRAWS = (1, 2, 3)
PROBE = ProbeConfig(batch_size=256, epochs=3)


def test_one_placebo_per_shape_with_the_features_column_scale():
    rng = np.random.default_rng(0)
    constant = rng.standard_normal((50, 6))
    constant[:, [1, 3, 4, 5]] = 7.0
    features = {"a": Feature(rng.standard_normal((50, 4)), "item"), "b": Feature(rng.random((50, 4)) * 9, "item"),
                "c": Feature(rng.standard_normal((80, 4)), "interaction"), "d": Feature(constant, "item")}
    placebos, pairs = placebos_for(features)
    assert pairs == {"a": "placebo[item,4]", "b": "placebo[item,4]", "c": "placebo[interaction,4]",
                     "d": "placebo[item,6,zero:1,3-5]"}
    assert set(placebos) == set(pairs.values())
    for name, placebo in pairs.items():
        feature, control = features[name], placebos[placebo]
        assert control.per == feature.per and control.values.shape == feature.values.shape
        # what the probes see: the standardized columns, equal in scale (and zero where constant)
        np.testing.assert_allclose(standardized(control.values).std(0), standardized(feature.values).std(0), atol=1e-6)
    assert not np.allclose(placebos["placebo[item,4]"].values[:, 0], placebos["placebo[item,4]"].values[:, 1])
    again, _ = placebos_for(features)  # a fixed draw: reruns compare the same placebos
    np.testing.assert_array_equal(again["placebo[item,4]"].values, placebos["placebo[item,4]"].values)
    with pytest.raises(ValueError, match="reserved"):
        placebos_for({"placebo[item,4]": features["a"]})


@pytest.fixture(scope="module", params=DRAWS)
def report(request):
    draw = request.param
    feed = simulate(SimulatorConfig.preset("tests", seed=draw))
    log = InteractionLog.from_dataset(feed.dataset, task="click")
    cutoff = float(np.quantile(log.timestamp, 0.8))
    rng = np.random.default_rng(draw + 100)
    factors = feed.item_factors
    features = {"true": factors, "noisy": factors + rng.standard_normal(factors.shape) * factors.std(),
                "noise": rng.standard_normal((log.num_items, 8)),
                "row_noise": Feature(rng.standard_normal((log.num_rows, 8)), "interaction")}
    return leakage_impact(log, cutoff=cutoff, features=features, seeds=8, probe=PROBE)


def test_pure_noise_reads_zero_against_its_placebo(report):
    noise = report.row("noise")
    assert noise.paired_with == "placebo[item,8]"
    assert noise.ci_low <= 0 <= noise.ci_high, (noise.delta, noise.ci_low, noise.ci_high)
    rows = report.row("row_noise")
    assert rows.paired_with == "placebo[interaction,8]"
    # a per-interaction input of noise costs the probe a lot (raw); against its placebo, nothing
    assert rows.raw_ci_high < 0
    assert abs(rows.delta) < 0.005 and abs(rows.delta) < abs(rows.raw_delta) / 2


def test_true_factors_lead_and_a_noisy_copy_scores_less(report):
    deltas = {name: report.row(name).delta for name in ("true", "noisy", "noise", "row_noise")}
    assert max(deltas, key=deltas.get) == "true"
    assert deltas["noisy"] < deltas["true"]
    assert report.row("true").ci_low > 0.01 and report.row("noisy").ci_low > 0


def test_placebo_probes_are_the_stated_cost(report):
    # three shapes (item x 4 for the factors and their copy, item x 8, interaction x 8): 3 placebos x 8 seeds
    assert report.metadata["placebo_probes"] == 3 * 8 and report.metadata["probes"] == (1 + 4 + 3) * 8
    assert [r.name for r in report.rows if r.kind == "placebo"] == [
        "placebo[item,4]", "placebo[item,8]", "placebo[interaction,8]"]
