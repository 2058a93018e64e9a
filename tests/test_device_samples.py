"""Batches built on the device (DeviceSampleBuilder) against the host's SampleBuilder.build, field by field.

Int and 0/1 fields must be bit-identical (values, dtype, shape); timestamps agree to about a
float32 ulp (the device subtracts float32 hi/lo pairs, the host float64 times). Datasets: the
simulator (side features, content), a MovieLens log loaded through its TFDS builder (side features;
with and without a content table), and a jagged random log with shared model user rows; with and
without the aggregate features. Then the
Trainer: the same losses with device batches, the option's resolution and its CLI flag.
"""

import dataclasses
import json

import jax
import numpy as np
import pytest

from genrank_jax import cli
from genrank_jax.data import sources
from genrank_jax.data.batching import BatchPlan, batch_shape, plan_batches, planned_figures
from genrank_jax.data.device_samples import DeviceSampleBuilder
from genrank_jax.data.samples import SampleBuilder, SampleLayout
from genrank_jax.data.synthetic import SimulatorConfig, simulate
from genrank_jax.model.config import GenRankConfig
from genrank_jax.training import TrainConfig, Trainer, resolve_batch_building, run_settings
from tests.data import fixtures
from tests.data.test_samples import random_dataset


@pytest.fixture(scope="module")
def simulated():
    return simulate(SimulatorConfig.preset("tests", seed=7)).dataset


@pytest.fixture(scope="module")
def movielens(tmp_path_factory):
    """The fixture MovieLens log in GroupLens 100k files, loaded by the real builder (no content)."""
    pytest.importorskip("tensorflow_datasets")  # absent on a lent GPU machine (bench/device_batches.sh)
    folder = tmp_path_factory.mktemp("ml")
    fixtures.write_grouplens_100k(folder / "raw", fixtures.movielens_log(seed=3))
    return sources.load_dataset("movielens:100k", data_dir=folder / "raw", tfds_dir=folder / "tfds",
                                split="last_request")


def with_content(dataset, dim=5, seed=0):
    """`dataset` with a seeded content table (MovieLens has none of its own)."""
    content = np.random.default_rng(seed).standard_normal((dataset.spec.num_items, dim)).astype(np.float32)
    return dataclasses.replace(dataset, spec=dataclasses.replace(dataset.spec, content_dim=dim),
                               catalog=dataclasses.replace(dataset.catalog, content=content))


def with_user_rows(dataset, seed=0):
    """A user's own log: timeline users map to (shared) model user rows."""
    rows = np.random.default_rng(seed).integers(0, dataset.spec.num_users, dataset.spec.num_users).astype(np.int32)
    return dataclasses.replace(dataset, interactions=dataclasses.replace(dataset.interactions, user_rows=rows))


def assert_same_batch(host, device):
    for field in dataclasses.fields(host):
        want, got = getattr(host, field.name), getattr(device, field.name)
        if want is None:  # aggregates, when the layout builds none
            assert got is None, field.name
            continue
        assert isinstance(got, jax.Array), field.name
        got = np.asarray(got)
        assert got.dtype == want.dtype and got.shape == want.shape, (field.name, got.dtype, want.dtype)
        if field.name == "timestamps":
            # about one float32 ulp (at most 2 here), plus ~2^-48 of the log's time span from the lo
            # half's own rounding; exactly 0 where the host has 0 (candidates, padding)
            np.testing.assert_array_less(np.abs(got - want), 2 * np.spacing(np.abs(want)) + 1e-6, field.name)
            np.testing.assert_array_equal(got[want == 0], 0, field.name)
        else:
            np.testing.assert_array_equal(got, want, err_msg=field.name)


def hard_requests(builder, rng, count):
    """`count` random requests and 6 that include users at the start of their timeline (no history), histories
    longer than max_history and requests with more than max_candidates exposures (each asserted)."""
    layout, every = builder.layout, np.arange(len(builder.history_count))
    kinds = [every[builder.history_count == 0], every[builder.history_count > layout.max_history],
             every[builder.candidate_count > layout.max_candidates]]
    assert all(len(k) for k in kinds), "the dataset lacks a case this test is meant to exercise"
    chosen = [rng.choice(k, 2) for k in kinds] + [rng.choice(every, count)]
    return np.concatenate(chosen)


def check_builders(dataset, organization, seed, **layout):
    rng = np.random.default_rng(seed)
    builder = SampleBuilder(dataset, SampleLayout(organization=organization, num_gap_buckets=8, **layout))
    assert (builder.aggregates is not None) == layout.get("aggregates", False)
    device = DeviceSampleBuilder(builder)
    requests = rng.permutation(hard_requests(builder, rng, 10))
    seq_len = int(builder.token_counts(requests).max()) + 5
    for batch_size, slots in ((len(requests) + 3, None), (len(requests), 9)):  # padding rows, then none
        assert_same_batch(builder.build(requests, seq_len, batch_size, slots),
                          device.build(requests, seq_len, batch_size, slots))
    # batches of the training plan, as the Trainer builds them (the last one has padding rows)
    plan = BatchPlan(batch_size=8, seed=seed)
    groups = plan_batches(builder, dataset.train_requests, plan)
    for group in groups[:2] + groups[-1:]:
        seq_len, slots = batch_shape(builder, group)
        assert_same_batch(builder.build(group, seq_len, 8, slots), device.build(group, seq_len, 8, slots))
    # a batch of padding only, and one request alone
    assert_same_batch(builder.build(requests[:0], 32, 4), device.build(requests[:0], 32, 4))
    assert_same_batch(builder.build(requests[:1], seq_len), device.build(requests[:1], seq_len))


@pytest.mark.parametrize("organization", ["action", "item"])
def test_simulator_batches_match(simulated, organization):
    # the simulator's histories run to hundreds of exposures and its requests hold 8: both are cut
    check_builders(simulated, organization, seed=1, max_history=20, max_candidates=5, num_request_slots=4,
                   num_slots=3, aggregates=organization == "action")


@pytest.mark.parametrize("content", [False, True])
@pytest.mark.parametrize("organization", ["action", "item"])
def test_movielens_batches_match(movielens, organization, content):
    dataset = with_content(movielens, seed=2) if content else movielens
    assert dataset.spec.side_vocab_sizes and dataset.spec.content_dim == (5 if content else 0)
    check_builders(dataset, organization, seed=2, max_history=4, max_candidates=2, num_request_slots=2,
                   num_slots=2, aggregates=content)


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("organization", ["action", "item"])
def test_jagged_log_with_user_rows_matches(organization, seed):
    dataset = with_user_rows(random_dataset(seed, num_users=14), seed)  # gaps of seconds to days
    check_builders(dataset, organization, seed=seed, max_history=5, max_candidates=3, num_request_slots=3,
                   num_slots=2)


def test_timestamps_keep_sub_second_gaps_of_absolute_times():
    """Times near 1.7e9 s a few ms apart: float32 of the absolute times would merge them."""
    dataset = random_dataset(3, num_users=4)
    log = dataset.interactions
    jitter = np.random.default_rng(3).random(log.num_exposures) * 0.01  # inside a request too
    times = log.timestamps + jitter
    dataset = dataclasses.replace(dataset, interactions=dataclasses.replace(log, timestamps=times))
    builder = SampleBuilder(dataset, SampleLayout(max_history=50))
    requests = np.flatnonzero(builder.history_count > 0)
    seq_len = int(builder.token_counts(requests).max())
    host, device = builder.build(requests, seq_len), DeviceSampleBuilder(builder).build(requests, seq_len)
    assert_same_batch(host, device)
    assert (np.abs(host.timestamps[(host.timestamps != 0)]) < 0.01).any()  # some gaps below 10 ms survive


def test_device_build_refuses_what_the_host_build_refuses(simulated):
    builder = SampleBuilder(simulated, SampleLayout(max_history=10))
    device = DeviceSampleBuilder(builder)
    requests = np.arange(4)
    short = int(builder.token_counts(requests).max()) - 1
    for make in (builder.build, device.build):
        with pytest.raises(ValueError, match="seq_len"):
            make(requests, short)
        with pytest.raises(ValueError, match="fit a batch"):
            make(requests, 512, batch_size=3)
        with pytest.raises(ValueError, match="candidate_slots"):
            make(requests, 512, candidate_slots=1)
    with pytest.raises(ValueError, match="request indices"):
        device.build(np.array([-1]), 512)
    labels = dataclasses.replace(simulated.interactions, actions=simulated.interactions.actions * 2)
    with pytest.raises(ValueError, match="0 or 1"):
        DeviceSampleBuilder(SampleBuilder(dataclasses.replace(simulated, interactions=labels), SampleLayout()))


def test_planned_figures_equal_the_batch(simulated):
    builder = SampleBuilder(simulated, SampleLayout(max_history=30, max_candidates=5))
    for group in plan_batches(builder, simulated.train_requests, BatchPlan(batch_size=16))[:3]:
        seq_len, slots = batch_shape(builder, group)
        batch = builder.build(group, seq_len, 16, slots)
        assert planned_figures(builder, group, seq_len, 16) == (batch.num_exposures(), batch.padding_ratio())


def make_trainer(dataset, batch_building, steps=6, config=None, **train):
    config = config or GenRankConfig.preset("tiny", dataset.spec)
    settings = TrainConfig(steps=steps, batch_size=16, max_history=24, warmup_steps=2, batch_building=batch_building,
                           **train)
    return Trainer(config, settings, dataset)


@pytest.mark.parametrize("aggregates, schedule", [(False, "epochs"), (True, "epochs"), (False, "stream")])
def test_training_on_device_batches_gives_the_host_losses(simulated, aggregates, schedule):
    config = GenRankConfig.preset("tiny", simulated.spec, use_aggregates=aggregates)
    stream = dict(schedule="stream", window="3000") if schedule == "stream" else {}
    host, device = (make_trainer(simulated, choice, config=config, **stream) for choice in ("host", "device"))
    assert (host.batch_building, host.device_builder) == ("host", None) and device.batch_building == "device"
    want, got = host.fit(steps=6), device.fit(steps=6)
    assert len(want) == 6
    assert [h["step"] for h in got] == [h["step"] for h in want]
    # timestamps agree to 1 float32 ulp, not bit for bit, and reach the loss through the time bias:
    # on the H200 the sixth loss differed by 1.2e-5 relative (the CPU agrees to 1e-6)
    np.testing.assert_allclose([h["loss"] for h in got], [h["loss"] for h in want], rtol=1e-4)
    assert [h["padding"] for h in got] == [h["padding"] for h in want]  # from the plan, not the batch


def test_batch_building_resolution_and_resume_digest(simulated):
    assert resolve_batch_building("host", None) == "host" and resolve_batch_building("device", None) == "device"
    expected = "host" if jax.default_backend() == "cpu" else "device"
    assert resolve_batch_building("auto", None) == expected
    mesh = jax.make_mesh((1, 1), ("data", "model"), devices=jax.devices()[:1])
    assert resolve_batch_building("auto", mesh) == "host" and resolve_batch_building("host", mesh) == "host"
    with pytest.raises(ValueError, match="batch_building='device'.*mesh"):
        resolve_batch_building("device", mesh)
    with pytest.raises(ValueError, match="batch_building"):
        TrainConfig(batch_building="gpu")
    # it computes nothing different: a resumed run may change it
    digests = {json.dumps(run_settings(TrainConfig(batch_building=choice), simulated, simulated.train_requests))
               for choice in ("host", "device", "auto")}
    assert len(digests) == 1 and "batch_building" not in json.loads(digests.pop())["train"]


def test_device_batches_check_what_validate_batch_would(simulated):
    """Without validate_batch, a sample with no history and a padded length over max_tokens are still refused."""
    from genrank_jax.model.validation import BatchError

    for choice in ("host", "device"):  # the same errors either way
        batches = make_trainer(simulated, choice, min_history=0)._batches_from(0)
        with pytest.raises(BatchError, match="empty history"):
            for _ in range(100):
                next(batches)
        # samples of up to 38 tokens fit max_tokens=40, their batches padded to 64 do not
        config = GenRankConfig.preset("tiny", simulated.spec, max_tokens=40)
        trainer = Trainer(config, TrainConfig(steps=2, batch_size=16, max_history=30, batch_building=choice), simulated)
        with pytest.raises(BatchError, match="64 tokens exceed the model's max_tokens=40"):
            trainer.fit()


def test_cli_batch_building(tmp_path, capsys):
    from tests.test_cli import FAST, assert_one_line_error, run_cli  # here: test_cli needs hypothesis

    code, _, err = run_cli(["train", "--data", "synthetic:tests", "--out", str(tmp_path / "mesh"), "--mesh", "data=1",
                            "--batch-building", "device", *FAST], capsys)
    line = assert_one_line_error(code, err, "train")
    assert "--batch-building device" in line and "--mesh" in line and not (tmp_path / "mesh").exists()
    code, _, err = run_cli(["train", "--batch-building", "gpu"], capsys)
    assert code == 2 and "--batch-building" in err
    out = tmp_path / "run"
    assert cli.main(["train", "--data", "synthetic:tests", "--out", str(out), "--batch-building", "device",
                     *FAST]) == 0
    assert json.loads((out / "metrics.json").read_text())["train"]["batch_building"] == "device"
