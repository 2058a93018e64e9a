"""The probe bank: one program equals the loop, every seed its own RNG stream, features padded."""

import numpy as np
import pytest

from genrank_jax.data.synthetic import SimulatorConfig, simulate
from genrank_jax.leakage import Feature, InteractionLog, ProbeConfig, bank, devices, leakage_impact

SMALL = ProbeConfig(dim=8, hidden=(16,), history=4, epochs=1, batch_size=256)


@pytest.fixture(scope="module")
def feed():
    return simulate(SimulatorConfig.preset("tests", num_users=120, num_items=90, requests_per_user=(4, 10)))


@pytest.fixture(scope="module")
def log(feed):
    return InteractionLog.from_dataset(feed.dataset, task=["click", "like"])


def _features(feed, log):
    rng = np.random.default_rng(0)
    # different widths and both sides: padding plus mask must keep them apart
    return {"factors": feed.item_factors, "content": feed.dataset.catalog.content,
            "row_noise": Feature(rng.standard_normal((log.num_rows, 3)), "interaction")}


def test_bank_equals_loop(feed, log):
    cutoff = float(np.quantile(log.timestamp, 0.8))
    kwargs = dict(cutoff=cutoff, features=_features(feed, log), seeds=2, probe=SMALL)
    parallel = leakage_impact(log, parallel=True, **kwargs)
    loop = leakage_impact(log, parallel=False, **kwargs)
    for a, b in zip(parallel.rows, loop.rows):
        assert a.name == b.name
        np.testing.assert_allclose(a.aucs, b.aucs, atol=1e-5, rtol=0)


def test_vmap_strategy_equals_map(feed, log):
    cutoff = float(np.quantile(log.timestamp, 0.8))
    run = bank.prepare_run(log, log.rows_between(None, cutoff), log.rows_between(cutoff, None),
                           {k: bank.as_feature(k, v, log) for k, v in _features(feed, log).items()}, SMALL)
    seeds, slots = [0, 0, 1, 1], [0, 2, 1, 3]
    mapped = bank.train_and_predict(run, seeds, slots, strategy="map")
    vmapped = bank.train_and_predict(run, seeds, slots, strategy="vmap")
    np.testing.assert_allclose(mapped, vmapped, atol=2e-4, rtol=0)  # logits after an epoch of Adam


def test_stacks_and_blocks_of_any_size_equal_the_loop(feed, log, monkeypatch):
    """A last stack smaller than the others and a last block of steps shorter than the others
    change nothing: the bank's logits equal the loop's."""
    cutoff = float(np.quantile(log.timestamp, 0.8))
    config = ProbeConfig(dim=8, hidden=(16,), history=4, epochs=2, batch_size=64)
    run = bank.prepare_run(log, log.rows_between(None, cutoff), log.rows_between(cutoff, None),
                           {k: bank.as_feature(k, v, log) for k, v in _features(feed, log).items()}, config)
    steps = run.steps_per_epoch
    block = next(b for b in range(2, steps) if steps // b >= 2 and steps % b)
    seeds, slots = [0, 0, 0, 1, 1, 2, 2], [0, 1, 3, 2, 3, 0, 1]  # 3 stacks of 3: 2 copies padded
    monkeypatch.setattr(bank, "block_steps", lambda _: 1)  # the loop steps one batch at a time
    loop = bank.train_and_predict(run, seeds, slots, parallel=False, strategy="map")
    monkeypatch.setattr(devices, "CPU_CHUNK", 3)
    monkeypatch.setattr(bank, "block_steps", lambda _: block)
    assert devices.layout(len(seeds), "map").chunk == 3
    stacked = bank.train_and_predict(run, seeds, slots, parallel=True, strategy="map")
    np.testing.assert_allclose(stacked, loop, atol=1e-5, rtol=0)


def test_a_bank_over_its_memory_budget_trains_in_groups_that_equal_one_bank(feed, log):
    """Probe states beyond the budget train group by group on shared batches: same logits."""
    cutoff = float(np.quantile(log.timestamp, 0.8))
    run = bank.prepare_run(log, log.rows_between(None, cutoff), log.rows_between(cutoff, None),
                           {k: bank.as_feature(k, v, log) for k, v in _features(feed, log).items()}, SMALL)
    seeds, slots = np.arange(12) // 4, np.arange(12) % 4
    whole = bank.train_and_predict(run, seeds, slots, strategy="map")
    budget = 4 * bank.state_bytes(run.config, run.sizes)  # room for 4 probes
    groups = bank.probe_groups(run, len(seeds), "map", budget)
    unit = len(devices.layout(len(seeds), "map").devices)
    assert len(groups) > 1 and sum(g.stop - g.start for g in groups) == len(seeds)
    assert all((g.stop - g.start) % unit == 0 for g in groups[:-1])
    grouped = bank.train_and_predict(run, seeds, slots, strategy="map", state_budget=budget)
    np.testing.assert_allclose(grouped, whole, atol=1e-5, rtol=0)
    assert bank.state_bytes(run.config, run.sizes) > 4 * 3 * (run.sizes.num_items + run.sizes.num_users) * SMALL.dim


def test_a_probe_does_not_depend_on_the_others_in_its_stack(feed, log):
    """Same stack size, other partners: probe 0's logits are bitwise equal (any cross-talk between
    probes, such as a reduction over the probe axis, would show here)."""
    cutoff = float(np.quantile(log.timestamp, 0.8))
    run = bank.prepare_run(log, log.rows_between(None, cutoff), log.rows_between(cutoff, None),
                           {k: bank.as_feature(k, v, log) for k, v in _features(feed, log).items()}, SMALL)
    first = bank.train_and_predict(run, [0, 0, 1, 1], [0, 1, 2, 3], strategy="map")
    other = bank.train_and_predict(run, [0, 5, 6, 7], [0, 3, 1, 0], strategy="map")
    assert devices.layout(4, "map").chunk == 4
    np.testing.assert_array_equal(first[0], other[0])
    assert not np.allclose(first[1], other[1])


def test_block_steps_fit_the_budget(feed, log):
    run = bank.prepare_run(log, log.rows_between(None, None), np.arange(10),
                           {k: bank.as_feature(k, v, log) for k, v in _features(feed, log).items()},
                           ProbeConfig(batch_size=32, epochs=1))
    assert run.steps_per_epoch > 1
    assert 1 <= bank.block_steps(run) <= run.steps_per_epoch


def test_each_seed_draws_its_own_initial_params(feed, log):
    run = bank.prepare_run(log, np.arange(100), np.arange(100, 120),
                           {k: bank.as_feature(k, v, log) for k, v in _features(feed, log).items()}, SMALL)
    seeds, slots = [0, 1, 2, 0, 1], [1, 1, 1, 2, 2]
    states = bank.init_bank(run, seeds, slots)
    trained = {**states["dense"], "item": states["tables"]["item"]["value"], "user": states["tables"]["user"]["value"]}
    for name, leaf in trained.items():
        if name.startswith("b") or name == "proj":
            continue  # biases start at zero; projections are checked below
        flat = np.asarray(leaf).reshape(len(seeds), -1)
        for a in range(3):
            for b in range(a + 1, 3):  # probes 0, 1, 2: three seeds, same feature
                assert not np.allclose(flat[a], flat[b]), f"{name}: seeds {a} and {b} start equal"
    # probes of one seed share every other starting weight on purpose (common random numbers)...
    np.testing.assert_array_equal(np.asarray(states["dense"]["w0"][0]), np.asarray(states["dense"]["w0"][3]))
    # ...but their feature projections come from per-feature streams, and padding rows are zero
    proj = np.asarray(states["dense"]["proj"])
    widths = [run.feature_widths[s] for s in slots]
    assert not np.allclose(proj[0][:3], proj[3][:3])
    for k, width in enumerate(widths):
        assert np.all(proj[k][width:] == 0) and np.all(proj[k][:width] != 0)


def test_features_are_checked_and_sided_by_shape(feed, log):
    assert bank.as_feature("f", feed.item_factors, log).per == "item"
    assert bank.as_feature("f", np.zeros((log.num_rows, 2)), log).per == "interaction"
    with pytest.raises(ValueError, match="rows"):
        bank.as_feature("f", np.zeros((7, 2)), log)
    with pytest.raises(ValueError, match="finite"):
        Feature(np.full((3, 2), np.nan), "item")
    square = InteractionLog(user=[0, 1], item=[0, 1], timestamp=[0.0, 1.0], labels=[0, 1])
    with pytest.raises(ValueError, match="wrap it"):
        bank.as_feature("f", np.zeros((2, 2)), square)


def test_standardized_features_have_unit_rows_and_keep_constant_columns_silent():
    values = np.random.default_rng(0).standard_normal((500, 4)) * [1.0, 10.0, 0.1, 0.0] + 5.0
    scaled = bank.standardized(values)
    np.testing.assert_allclose(scaled[:, :3].std(0), 0.5, rtol=1e-5)
    np.testing.assert_array_equal(scaled[:, 3], 0.0)
