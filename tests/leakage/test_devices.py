"""The bank spread over several devices: layout rules, and on two CPU devices (a fresh process,
since JAX fixes its CPU device count when it starts) the same logits as the loop, and the CLI."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import pytest

from genrank_jax.leakage import devices


def _fake_devices(monkeypatch, count):
    monkeypatch.setattr(devices.jax, "local_devices", lambda: [f"device{i}" for i in range(count)])


def test_one_device_runs_stacks_of_cpu_chunk(monkeypatch):
    _fake_devices(monkeypatch, 1)
    assert devices.layout(8, "map") == devices.Layout(("device0",), 8, 8)
    lay = devices.layout(9, "map")  # 2 equal stacks of 5, one padding copy
    assert (lay.chunk, lay.padded, lay.spread) == (5, 10, False)
    assert devices.layout(9, "vmap").chunk == 9


def test_several_devices_split_the_probes_then_stack_them(monkeypatch):
    _fake_devices(monkeypatch, 2)
    lay = devices.layout(64, "map")
    assert (len(lay.devices), lay.chunk, lay.padded, lay.spread) == (2, 4, 64, True)
    lay = devices.layout(7, "map")  # 4 a device: one stack of 4 each, one padding copy
    assert (lay.chunk, lay.padded) == (4, 8)
    assert devices.layout(10, "vmap").chunk == 5
    assert devices.layout(1, "map").devices == ("device0",)  # a probe alone stays on one device
    with pytest.raises(ValueError, match="at least one probe"):
        devices.layout(0, "map")


def test_late_call_warns_and_keeps_the_device_count():
    jax.devices()  # the backend is up in this process
    before = len(jax.devices("cpu"))
    if jax.config.jax_num_cpu_devices > 0:
        pytest.skip("this process set its CPU device count itself")
    with pytest.warns(UserWarning, match="already started"):
        assert devices.use_every_cpu_core(before + 1) == before


def _run(code: str, tmp_path, xla_flags: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags:
        env["XLA_FLAGS"] = xla_flags
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_device_count_the_user_set_is_kept(tmp_path):
    result = _run("""
        from genrank_jax.leakage import use_every_cpu_core
        print(use_every_cpu_core(2))
        """, tmp_path, xla_flags="--xla_force_host_platform_device_count=3")
    assert result.returncode == 0 and result.stdout.split() == ["3"], result.stderr[-3000:]


def test_bank_spread_over_two_cpu_devices_equals_the_loop(tmp_path):
    result = _run("""
        from genrank_jax.leakage import use_every_cpu_core
        assert use_every_cpu_core(2) == 2
        import numpy as np
        from genrank_jax.data.synthetic import SimulatorConfig, simulate
        from genrank_jax.leakage import InteractionLog, ProbeConfig, bank, devices
        feed = simulate(SimulatorConfig.preset("tests", num_users=120, num_items=90, requests_per_user=(4, 10)))
        log = InteractionLog.from_dataset(feed.dataset, task=["click", "like"])
        cutoff = float(np.quantile(log.timestamp, 0.8))
        config = ProbeConfig(dim=8, hidden=(16,), history=4, epochs=2, batch_size=64)
        features = {"factors": bank.as_feature("factors", feed.item_factors, log),
                    "content": bank.as_feature("content", feed.dataset.catalog.content, log)}
        run = bank.prepare_run(log, log.rows_between(None, cutoff), log.rows_between(cutoff, None), features, config)
        seeds, slots = [0, 0, 0, 1, 1, 2, 2], [0, 1, 2, 2, 1, 0, 1]
        lay = devices.layout(len(seeds), "map")
        assert lay.spread and lay.padded == 8, lay
        loop = bank.train_and_predict(run, seeds, slots, parallel=False)
        spread = bank.train_and_predict(run, seeds, slots, parallel=True)
        assert loop.std() > 0.1, loop.std()
        np.testing.assert_allclose(spread, loop, atol=1e-5, rtol=0)
        assert devices.layout(len(seeds), "vmap").chunk == 4  # a GPU's layout: one stack a device
        vmapped = bank.train_and_predict(run, seeds, slots, parallel=True, strategy="vmap")
        np.testing.assert_allclose(vmapped, loop, atol=2e-4, rtol=0)  # batched ops round differently
        print("ok")
        """, tmp_path)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_lis_command_writes_table_json_and_plot(tmp_path):
    out = tmp_path / "lis"
    result = subprocess.run(
        [sys.executable, "-m", "genrank_jax", "lis", "--data", "synthetic:tests", "--seeds", "2", "--epochs", "1",
         "--horizon", "7d", "--leaks", "next_item,cooccurrence_neighbors", "--out", str(out), "--no-progress",
         "--table-optimizer", "rowwise_adagrad"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "lis.json").read_text())
    names = [row["name"] for row in report["rows"]]
    # the leaks, then one placebo per shape (next_item is per interaction, the neighbours per item), then
    # the features baseline as the probes' reference
    assert names == ["baseline", "next_item@7d", "cooccurrence_neighbors@7d", "placebo[interaction,32]",
                     "placebo[item,32]", "features"]
    rows = {row["name"]: row for row in report["rows"]}
    assert rows["next_item@7d"]["paired_with"] == "placebo[interaction,32]"
    assert rows["cooccurrence_neighbors@7d"]["paired_with"] == "placebo[item,32]"
    assert report["metadata"]["placebo_probes"] == 2 * 2
    # the flag reaches the probes, and the report records the resolved optimizer and its rate
    assert report["metadata"]["probe"]["table_optimizer"] == "rowwise_adagrad"
    assert report["metadata"]["probe"]["table_learning_rate"] == pytest.approx(0.035)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert report["metadata"]["devices"] == min(cores, report["metadata"]["probes"])  # one per core
    assert (out / "lis.md").read_text() in result.stdout
    assert "| raw Δ vs baseline |" in result.stdout and "| placebo[item,32] |" in result.stdout
    assert (out / "lis.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
