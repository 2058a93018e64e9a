"""The GenRank probe: requests rebuilt from the log, and the true item factors move its AUC."""

import numpy as np

from genrank_jax.data.synthetic import SimulatorConfig, simulate
from genrank_jax.leakage import InteractionLog, ProbeConfig, leakage_impact
from genrank_jax.leakage.genrank_probe import request_log

PROBE = ProbeConfig(model="genrank", epochs=2, learning_rate=3e-3, genrank_history=32, genrank_candidates=16)


def test_request_log_groups_user_time_and_caps_candidates():
    rng = np.random.default_rng(0)
    rows = 200
    log = InteractionLog(user=rng.integers(0, 5, rows), item=rng.integers(0, 9, rows),
                         timestamp=rng.integers(0, 6, rows).astype(float), labels=rng.integers(0, 2, rows))
    grouped = request_log(log, max_candidates=4)
    data = grouped.dataset.interactions
    np.testing.assert_array_equal(np.sort(grouped.order), np.arange(rows))
    np.testing.assert_array_equal(data.item_ids, log.item[grouped.order])
    sizes = np.diff(data.request_starts)
    assert sizes.max() <= 4
    for start, end in zip(data.request_starts[:-1], data.request_starts[1:]):
        assert len(set(zip(data.user_ids[start:end], data.timestamps[start:end]))) == 1
    grouped.dataset.validate()


def test_true_item_factors_have_positive_lis_with_the_genrank_probe():
    feed = simulate(SimulatorConfig.preset("tests", seed=0))
    log = InteractionLog.from_dataset(feed.dataset, task="click")
    cutoff = float(np.quantile(log.timestamp, 0.8))
    rng = np.random.default_rng(1)
    # no placebos: they are the same for any probe model (tested with the MLP probe), and GenRank
    # probes are the slow ones
    report = leakage_impact(log, cutoff=cutoff, seeds=2, probe=PROBE, placebo=False,
                            features={"true": feed.item_factors,
                                      "row_noise": rng.standard_normal((log.num_rows, 4))})
    assert report.metadata["probes"] == 6 and report.row("true").paired_with == "baseline"
    assert report.row("true").delta > 0.005, report.to_markdown()
    assert all(0.5 < a < 1.0 for a in report.baseline.aucs)
