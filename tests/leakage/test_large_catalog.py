"""What lets the probe bank run at a real catalog's size: row-wise Adagrad tables, features gathered
as bfloat16 bits, and no full-size float32 copy of a feature in the compiled programs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genrank_jax.data.synthetic import SimulatorConfig, simulate
from genrank_jax.leakage import Feature, InteractionLog, ProbeConfig, bank
from genrank_jax.leakage import probe as probe_lib
from genrank_jax.leakage.impact import probe_aucs

SMALL = ProbeConfig(dim=8, hidden=(16,), history=4, epochs=2, batch_size=64)


@pytest.fixture(scope="module")
def log():
    feed = simulate(SimulatorConfig.preset("tests", num_users=120, num_items=90, requests_per_user=(4, 10)))
    return InteractionLog.from_dataset(feed.dataset, task=["click", "like"])


def _run(log, config, rows_width=3):
    rng = np.random.default_rng(0)
    features = {"code": Feature(rng.standard_normal((log.num_items, 5)), "item"),
                "row_noise": Feature(rng.standard_normal((log.num_rows, rows_width)), "interaction")}
    cutoff = float(np.quantile(log.timestamp, 0.8))
    return bank.prepare_run(log, log.rows_between(None, cutoff), log.rows_between(cutoff, None), features, config)


def test_rowwise_adagrad_matches_a_plain_loop():
    """The update written again per row in float64: accumulate the mean squared gradient, step by
    the gradient over its root, decay the value (rows with zero gradient move by the decay only)."""
    rng = np.random.default_rng(1)
    value, grad = rng.standard_normal((2, 6, 3, 4))
    grad[2] = 0.0  # an untouched (padding) row
    accumulator = rng.uniform(0.0, 2.0, (6, 3))
    lr, decay = np.array([0.1, 0.01, 0.5]), np.array([0.0, 1e-2, 1e-3])
    new_value, new_acc = probe_lib._rowwise_adagrad(
        jnp.asarray(value, jnp.float32), jnp.asarray(grad, jnp.float32), jnp.asarray(accumulator, jnp.float32),
        jnp.asarray(lr[None, :, None], jnp.float32), jnp.asarray(decay[None, :, None], jnp.float32))
    for q in range(6):
        for c in range(3):
            acc = accumulator[q, c] + sum(g * g for g in grad[q, c]) / 4
            want = [w - lr[c] * (g / (np.sqrt(acc) + 1e-8) + decay[c] * w) for w, g in zip(value[q, c], grad[q, c])]
            np.testing.assert_allclose(new_acc[q, c], acc, rtol=1e-6)
            np.testing.assert_allclose(new_value[q, c], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(new_acc[2], accumulator[2].astype(np.float32))


def test_auto_picks_rowwise_adagrad_for_a_large_catalog():
    config = ProbeConfig()
    small = probe_lib.ProbeSizes(num_items=1682, num_users=943, num_tasks=1, feature_width=32)
    large = probe_lib.ProbeSizes(num_items=10**6, num_users=2 * 10**5, num_tasks=1, feature_width=32)
    assert probe_lib.resolved_table_optimizer(config, small).table_optimizer == "adam"
    assert probe_lib.resolved_table_optimizer(config, small).table_learning_rate is None  # Adam's: learning_rate
    resolved = probe_lib.resolved_table_optimizer(config, large)
    assert resolved.table_optimizer == "rowwise_adagrad"
    assert resolved.table_learning_rate == probe_lib.ROWWISE_LEARNING_RATE
    forced = dataclasses.replace(config, table_optimizer="adam")
    assert probe_lib.resolved_table_optimizer(forced, large).table_optimizer == "adam"
    # a third of Adam's memory: the value plus one accumulator a row, against the value and two moments
    adam, rowwise = bank.state_bytes(forced, large), bank.state_bytes(config, large)
    assert 2.8 < adam / rowwise < 3.0
    with pytest.raises(ValueError, match="table_optimizer"):
        ProbeConfig(table_optimizer="sgd")
    with pytest.raises(ValueError, match="table_learning_rate"):
        ProbeConfig(table_learning_rate=0.0)


def test_rowwise_bank_equals_its_loop_and_learns(log):
    """Row-wise Adagrad probes: the bank equals the probe-at-a-time loop, its state is one
    accumulator a row, and the probes beat chance on the eval window."""
    run = _run(log, dataclasses.replace(SMALL, table_optimizer="rowwise_adagrad"))
    state = bank.init_bank(run, [0], [0])
    assert state["tables"]["item"].keys() == {"value", "accumulator"}
    assert state["tables"]["item"]["accumulator"].shape == (1, log.num_items + 1)
    seeds, slots = [0, 0, 1, 1, 2], [0, 1, 2, 0, 1]
    stacked = bank.train_and_predict(run, seeds, slots, parallel=True, strategy="map")
    loop = bank.train_and_predict(run, seeds, slots, parallel=False, strategy="map")
    np.testing.assert_allclose(stacked, loop, atol=1e-5, rtol=0)
    aucs = probe_aucs(stacked, run.eval_labels)
    assert np.nanmean(aucs) > 0.53, np.nanmean(aucs)
    adam = bank.train_and_predict(_run(log, dataclasses.replace(SMALL, table_optimizer="adam")), seeds, slots)
    assert not np.allclose(adam, stacked, atol=1e-3)  # the option is really used


def test_feature_rows_are_the_bfloat16_values(log):
    """Features live on the device as bfloat16 bit patterns; gathered rows are exactly the
    standardized values rounded to bfloat16, widened to float32 (padding columns zero)."""
    run = _run(log, SMALL)
    table = run.device_data["item_features"][0]
    assert table.dtype == jnp.uint16
    code = np.random.default_rng(0).standard_normal((log.num_items, 5))  # `_run`'s first draw
    want = bank.standardized(code).astype(jnp.bfloat16).astype(np.float32)
    index = np.random.default_rng(2).integers(0, log.num_items, 50)
    got = np.asarray(bank.feature_rows(table, jnp.asarray(index, jnp.int32)))
    np.testing.assert_array_equal(got[:, :5], want[index])
    np.testing.assert_array_equal(got[:, 5:], 0.0)
    np.testing.assert_array_equal(np.asarray(bank.widened(table))[:log.num_items, :5], want)


def test_no_float32_copy_of_a_feature_when_gathered_in_a_loop(log):
    """XLA's CPU backend moves a bfloat16 table's float32 conversion ahead of the gather and hoists
    it out of loops: a float32 copy of the whole feature (2.7 GB a device at 5M rows, before the bank
    gathered bit patterns). Gathering the shared batch inside a scan, as any loop over steps does,
    must need far less scratch memory than one float32 copy of the per-interaction feature."""
    width = 64
    run = _run(log, SMALL, rows_width=width)
    batches = jax.tree.map(lambda x: x[:2], bank.epoch_batches(run, 0))

    def looped(data, steps):
        def body(total, step):
            batch = jax.tree.map(lambda x: x[step], steps)
            return total + jnp.sum(bank._shared_batch(data, batch, run.sizes.num_items)["features"]), None
        return jax.lax.scan(body, 0.0, jnp.arange(2))[0]

    compiled = jax.jit(looped).lower(run.device_data, batches).compile()
    float32_copy = 4 * log.num_rows * width
    assert compiled.memory_analysis().temp_size_in_bytes < float32_copy // 4


def test_unique_ids_of_a_step_are_sorted(log):
    """`stack_step` tells XLA its gathers and scatters read sorted ids: np.unique's order, padded
    with the padding id, the largest."""
    run = _run(log, SMALL)
    batches = bank.epoch_batches(run, 0)
    for name in ("unique_items", "unique_users"):
        assert (np.diff(batches[name], axis=1) >= 0).all()


def test_large_states_run_as_one_stack_a_device_and_equal_the_loop(log, monkeypatch):
    """Probes whose state is far beyond a cache run as one stack a device (no copies of stacks in
    and out of the device's share); the logits still equal the probe-at-a-time loop's."""
    from genrank_jax.leakage import devices

    run = _run(log, dataclasses.replace(SMALL, table_optimizer="rowwise_adagrad"))
    seeds, slots = [0, 0, 1, 1, 2, 2, 3], [0, 1, 2, 0, 1, 2, 0]
    loop = bank.train_and_predict(run, seeds, slots, parallel=False, strategy="map")
    monkeypatch.setattr(devices, "CPU_CHUNK", 3)
    assert bank._layout(run, len(seeds), "map").chunk == 3  # small states: stacks of CPU_CHUNK
    monkeypatch.setattr(bank, "ONE_STACK_ABOVE_BYTES", 0)
    lay = bank._layout(run, len(seeds), "map")
    assert lay.chunk == -(-len(seeds) // len(lay.devices))  # the whole share of each device
    stacked = bank.train_and_predict(run, seeds, slots, parallel=True, strategy="map")
    np.testing.assert_allclose(stacked, loop, atol=1e-5, rtol=0)
