"""Sharded training on a JAX mesh (genrank_jax.sharding).

Rules and mesh specs are checked here; training, restoring and the attention op on several
devices run in subprocesses with their own CPU device count (`workers.py`): 8 devices, 2, 1, and
two localhost processes joined by jax.distributed.
"""

import json
import socket
import subprocess

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from genrank_jax.data.synthetic import SimulatorConfig, simulate
from genrank_jax.model.baselines import build_model
from genrank_jax.model.config import GenRankConfig
from genrank_jax.sharding import RULES, ShardingError, ShardingOptions, make_mesh, match_rule, parse_mesh_spec
from genrank_jax.sharding.rules import check_divisible, path_name, state_specs
from genrank_jax.training import TrainConfig, make_optimizer
from tests.sharding import workers
from tests.sharding.harness import ROOT, run_worker, worker_command, worker_env

ARCHITECTURES = [dict(architecture="genrank", block="transformer"), dict(architecture="genrank", block="hstu"),
                 dict(architecture="genrank", organization="item"), dict(architecture="din"),
                 dict(architecture="logistic"), dict(architecture="genrank", use_aggregates=True),
                 dict(architecture="features", features_hidden=8)]


@pytest.fixture(scope="module")
def spec():
    return simulate(SimulatorConfig.preset("tests")).dataset.spec


def abstract_state(spec, **overrides):
    config = GenRankConfig.preset("tiny", spec, **overrides)

    def make():
        model = build_model(config, rngs=nnx.Rngs(0))
        return model, nnx.Optimizer(model, make_optimizer(TrainConfig()), wrt=nnx.Param)

    return nnx.split(nnx.eval_shape(make))[1]


@pytest.mark.parametrize("overrides", ARCHITECTURES, ids=lambda o: "-".join(map(str, o.values())))
def test_every_parameter_matches_a_rule_on_purpose(spec, overrides):
    state = abstract_state(spec, **overrides)
    used = {}
    for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]:
        pattern, layout = match_rule(path_name(path))  # raises for a parameter no rule names
        used.setdefault(pattern, []).append(path_name(path))
    # tables that grow with the data are split by rows; their optimizer moments follow
    tables = [n for names in used.values() for n in names if n.endswith(("item/embedding", "user/embedding"))]
    assert (tables or overrides["architecture"] == "features") and all(match_rule(n)[1] == "rows" for n in tables)
    specs = jax.tree_util.tree_flatten_with_path(state_specs(state, ShardingOptions(transformer="model")),
                                                 is_leaf=lambda x: isinstance(x, P))[0]
    for path, partition in specs:
        full = jax.tree_util.keystr(path, simple=True, separator="/")
        if full.endswith("items/item/embedding/value") or full.endswith("/item/embedding/value"):
            assert partition == P("model", None), full


def test_rules_are_ordered_patterns_and_unknown_parameters_fail():
    assert all(isinstance(p, str) and isinstance(layout, str) for p, layout in RULES)
    assert match_rule("embed/items/item/embedding")[1] == "rows"
    assert match_rule("blocks/3/qkv/kernel")[1] == "columns"
    key, attr, index = jax.tree_util.DictKey, jax.tree_util.GetAttrKey, jax.tree_util.SequenceKey
    moment = (index(1), key("opt_state"), index(1), index(0), attr("mu"), key("embed"), key("user"), key("embedding"))
    assert path_name(moment) == "embed/user/embedding"  # an Adam moment is named by its parameter
    with pytest.raises(ShardingError, match="no partition rule matches parameter 'embed/new_table/embedding'"):
        match_rule("embed/new_table/embedding")


@pytest.mark.parametrize("text, message", [
    ("data=4,model=2", None), ("model=2", None),
    ("data=4;model=2", "is not axis=size"), ("data=0", "positive size"), ("pipeline=2", "unknown axis"),
    ("data=2,data=2", "given twice"), ("", "names no axis"),
])
def test_mesh_spec(text, message):
    if message is None:
        sizes = parse_mesh_spec(text)
        assert set(sizes) == {"data", "model"} and sizes["model"] == 2
    else:
        with pytest.raises(ShardingError, match=message):
            parse_mesh_spec(text)


def test_mesh_must_use_every_device():
    with pytest.raises(ShardingError, match="needs 2 devices but there are 1"):
        make_mesh("data=2", devices=jax.devices()[:1])
    assert dict(make_mesh("data=1", devices=jax.devices()[:1]).shape) == {"data": 1, "model": 1}


def test_split_dimensions_must_divide(spec):
    state = abstract_state(spec)  # 400 items, 300 users, side vocabularies 16 and 8
    mesh = AbstractMesh((2, 8), ("data", "model"))
    with pytest.raises(ShardingError, match=r"embed/user/embedding has 300 along dimension 0.*embedding_row_multiple"):
        check_divisible(state, state_specs(state), mesh)
    padded = abstract_state(spec, embedding_row_multiple=8)
    check_divisible(padded, state_specs(padded), mesh)
    with pytest.raises(ShardingError, match=r"blocks/0/qkv/kernel has 96 along dimension 1"):
        check_divisible(padded, state_specs(padded, ShardingOptions(transformer="model")),
                        AbstractMesh((1, 64), ("data", "model")))


def test_bad_mesh_fails_before_any_work():
    run_worker("errors_before_work", devices=8)


def test_attention_runs_per_device_block():
    run_worker("attention_per_device_block", devices=8)


def test_sharded_training_equals_one_device_and_restores_on_other_meshes(tmp_path):
    run_worker("sharded_training_equals_one_device", tmp_path, devices=8)  # saves on data=4,model=2
    run_worker("restore", tmp_path, "data=2,model=1", devices=2)
    run_worker("restore", tmp_path, "none", devices=1)


@pytest.mark.slow  # ~95 s on 2 cores; the stream's batches are the epoch schedule's local batches, tested above
def test_stream_schedule_on_a_mesh_equals_one_device():
    run_worker("stream_on_a_mesh_equals_one_device", devices=8)


@pytest.mark.parametrize("source", ["simulator", "own log"])
def test_two_processes_train_like_one(tmp_path, source):
    """Two localhost processes (2 CPU devices each, gloo collectives), each building half of every
    batch, end with the parameters and optimizer state of one process on one device. On a user's
    own log, both processes memory-map the arrays the first load saved."""
    log_dir = ""
    if source == "own log":
        from tests.data import own_log_files

        own_log_files.write(tmp_path / "log")
        log_dir = str(tmp_path / "log")
        workers.tiny_run(log_dir=log_dir)  # prepares and saves once, before the processes start
    port = _free_port()
    out = tmp_path / "two.npz"
    processes = [subprocess.Popen(worker_command("process", i, 2, port, out, log_dir), cwd=ROOT, env=worker_env(2),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), "\n".join(o[-4000:] for o in outputs)

    from genrank_jax.training import Trainer

    dataset, config, train = workers.tiny_run(log_dir=log_dir)
    one = Trainer(config, train, dataset)
    one.fit()
    got, want = np.load(out), workers.values(one)
    np.testing.assert_allclose(got["losses"], [h["loss"] for h in one.history], rtol=1e-5)
    assert sorted(want) == sorted(set(got.files) - {"losses"})
    for name in want:  # tolerance as in workers.assert_same_training
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=1e-5, err_msg=name)


def test_cli_trains_on_a_mesh_and_rejects_a_bad_one(tmp_path):
    fast = ["--data", "synthetic:tests", "--preset", "tiny", "--steps", "2", "--batch-size", "16",
            "--max-history", "16", "--no-progress", "--embedding-row-multiple", "2"]
    done = subprocess.run([*worker_command("x")[:1], "-m", "genrank_jax", "train", "--mesh", "data=2,model=2",
                           "--transformer", "model", *fast, "--out", str(tmp_path)],
                          cwd=ROOT, env=worker_env(4), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["steps"] == 2 and report["train"]["mesh"] == "data=2,model=2"
    bad = subprocess.run([*worker_command("x")[:1], "-m", "genrank_jax", "train", "--mesh", "data=3", *fast,
                          "--out", str(tmp_path / "bad")],
                         cwd=ROOT, env=worker_env(4), capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "mesh data=3,model=1 needs 3 devices but there are 4" in bad.stderr


# The 8-device Trainer example of docs/guides/multi-host.md runs in tests/test_docs_examples.py.


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def test_probe_bank_runs_over_the_devices_of_two_processes(tmp_path):
    """Two processes with 2 CPU devices each run the bank as one 4-device mesh; logits equal one
    process with 4 devices (same layout: 4 slices of 2 probes)."""
    port = _free_port()
    processes = [subprocess.Popen(worker_command("probe_bank", tmp_path / "two.npy", i, 2, port), cwd=ROOT,
                                  env=worker_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), "\n".join(o[-4000:] for o in outputs)
    run_worker("probe_bank", tmp_path / "one.npy", devices=4)
    two, one = np.load(tmp_path / "two.npy"), np.load(tmp_path / "one.npy")
    assert one.shape[0] == 7 and one.std() > 0.1
    np.testing.assert_allclose(two, one, atol=1e-6, rtol=0)
