"""Scenarios the sharding tests run in subprocesses, each with its own CPU device count.

`python -m tests.sharding.workers NAME [ARGS]`, started by `harness.run_worker`, which sets
XLA_FLAGS=--xla_force_host_platform_device_count=N. A scenario asserts what it checks (a failed
assertion is a non-zero exit and its traceback reaches the test) and may write arrays to files.
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import numpy as np
from flax import nnx

# The tiny run every scenario trains: 32 tokens (24 history + 8 candidates) is one length bucket,
# so each trainer compiles one step. Tables padded to a multiple of 8 rows split over any mesh here.
STEPS = 4
BATCH = 16


def tiny_run(embedding_row_multiple=8, log_dir: str | None = None, **config_overrides):
    """The tiny run, on the simulator or (log_dir) on the own-log fixture in that folder, which the
    caller has already loaded once (so every process memory-maps the same saved arrays)."""
    from genrank_jax.data import load_dataset
    from genrank_jax.data.synthetic import SimulatorConfig, simulate
    from genrank_jax.model.config import GenRankConfig
    from genrank_jax.training import TrainConfig

    if log_dir:
        folder = pathlib.Path(log_dir)
        dataset = load_dataset(f"log:{folder / 'log.parquet'}", schema=folder / "schema.toml", tfds_dir=folder / "tfds")
    else:
        dataset = simulate(SimulatorConfig.preset("tests")).dataset
    config = GenRankConfig.preset("tiny", dataset.spec, attention_impl="xla",
                                   embedding_row_multiple=embedding_row_multiple, **config_overrides)
    train = TrainConfig(steps=STEPS, batch_size=BATCH, max_history=24, max_candidates=8, warmup_steps=2,
                        checkpoint_every=STEPS)
    return dataset, config, train


def values(trainer) -> dict[str, np.ndarray]:
    """Every state leaf as a numpy array, by path (gathered from all processes)."""
    from jax.experimental import multihost_utils

    leaves = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(trainer.state))[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"):
            np.asarray(multihost_utils.process_allgather(leaf, tiled=True)) for path, leaf in leaves}


def assert_same_training(reference, sharded, label):
    """Sharded and one-device runs agree: losses to rtol 1e-5, every parameter and optimizer
    moment to atol 1e-5 (f32; the sharded step sums gradients over devices in another order)."""
    np.testing.assert_allclose([h["loss"] for h in sharded.history], [h["loss"] for h in reference.history],
                               rtol=1e-5, err_msg=label)
    want, got = values(reference), values(sharded)
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=1e-5, err_msg=f"{label}: {name}")


def shard_rows(trainer, name: str, moment: str | None = None) -> tuple[int, ...]:
    """Shape of one device's shard of parameter `name` (or of its Adam `moment`, "mu" or "nu")."""
    from genrank_jax.sharding import path_name

    for path, leaf in jax.tree_util.tree_flatten_with_path(trainer.state)[0]:
        full = jax.tree_util.keystr(path, simple=True, separator="/")
        if path_name(path) == name and (f"/{moment}/" in full if moment else "opt_state" not in full):
            return leaf.addressable_shards[0].data.shape
    raise KeyError(name)


def sharded_training_equals_one_device(out_dir: str):
    """8 devices: 4x2 (tensor parallel) and 8x1 (tables over every device) runs equal one device;
    shard shapes show the split; the 4x2 run leaves a checkpoint and its values for `restore`."""
    from genrank_jax.sharding import ShardingOptions, make_mesh
    from genrank_jax.training import Trainer

    assert len(jax.devices()) == 8
    dataset, config, train = tiny_run()
    reference = Trainer(config, train, dataset)
    reference.fit()
    tensor_parallel = Trainer(config, train, dataset, out_dir, mesh=make_mesh("data=4,model=2"),
                              sharding_options=ShardingOptions(transformer="model"))
    tensor_parallel.fit()
    assert_same_training(reference, tensor_parallel, "data=4,model=2")
    rows, width = config.table_rows(dataset.spec.num_items), config.width
    assert shard_rows(tensor_parallel, "embed/items/item/embedding") == (rows // 2, width)
    assert shard_rows(tensor_parallel, "embed/user/embedding") == (config.table_rows(dataset.spec.num_users) // 2,
                                                                   width)
    assert shard_rows(tensor_parallel, "blocks/0/qkv/kernel") == (width, 3 * width // 2)
    assert shard_rows(tensor_parallel, "embed/position/embedding") == (config.max_tokens, width)  # replicated
    for moment in ("mu", "nu"):  # optimizer state follows its parameter
        assert shard_rows(tensor_parallel, "embed/items/item/embedding", moment) == (rows // 2, width)
    np.savez(f"{out_dir}/saved.npz", **values(tensor_parallel))

    every_device = Trainer(config, train, dataset, mesh=make_mesh("data=8"),
                           sharding_options=ShardingOptions(table_axes=("data", "model")))
    every_device.fit()
    assert_same_training(reference, every_device, "data=8, tables over all devices")
    assert shard_rows(every_device, "embed/items/item/embedding") == (rows // 8, width)


def stream_on_a_mesh_equals_one_device():
    """The stream schedule on data=4,model=2: the same windows, scores and parameters as one device."""
    import dataclasses

    from genrank_jax.sharding import make_mesh
    from genrank_jax.training import Trainer

    dataset, config, train = tiny_run()
    train = dataclasses.replace(train, schedule="stream", window="6000", checkpoint_every=0)
    reference = Trainer(config, train, dataset)
    reference.fit()
    sharded = Trainer(config, train, dataset, mesh=make_mesh("data=4,model=2"))
    sharded.fit()
    assert len(reference.stream_curve) == len(sharded.stream_curve) > 2
    for a, b in zip(reference.stream_curve, sharded.stream_curve):
        assert a["exposures"] == b["exposures"]
        for task, row in a["tasks"].items():
            np.testing.assert_allclose(b["tasks"][task]["auc"], row["auc"], rtol=1e-5, err_msg=task)
    assert_same_training(reference, sharded, "stream on data=4,model=2")


def restore(out_dir: str, spec: str):
    """Restore the 4x2 checkpoint of `out_dir` on this process's mesh `spec` ("none": one
    device, no mesh): values equal the saved ones exactly and sit in this mesh's layout."""
    from genrank_jax.sharding import make_mesh
    from genrank_jax.training import Trainer

    dataset, config, train = tiny_run()
    mesh = None if spec == "none" else make_mesh(spec)
    trainer = Trainer(config, train, dataset, out_dir, mesh=mesh)
    assert trainer.resume() == STEPS
    saved = np.load(f"{out_dir}/saved.npz")
    got = values(trainer)
    assert sorted(saved.files) == sorted(got)
    for name in saved.files:
        np.testing.assert_array_equal(got[name], saved[name], err_msg=name)
    model = 1 if mesh is None else mesh.shape["model"]
    assert shard_rows(trainer, "embed/items/item/embedding") == (config.table_rows(dataset.spec.num_items) // model,
                                                                 config.width)
    trainer.fit(steps=STEPS + 1)  # and training continues from it
    print(json.dumps({"devices": len(jax.devices()), "loss": trainer.history[-1]["loss"]}))


def errors_before_work():
    """Bad meshes fail in the constructor, before the state is initialized or a step compiled
    (JAX logs every compilation: only single eager ops, the ALiBi slopes, may have compiled)."""
    import logging

    from genrank_jax.sharding import ShardingError, make_mesh
    from genrank_jax.training import Trainer

    dataset, config, train = tiny_run(embedding_row_multiple=1)
    compiled = []

    class Names(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if message.startswith("Finished XLA compilation of "):
                compiled.append(message.split()[4])

    jax.config.update("jax_log_compiles", True)
    logging.getLogger("jax._src.dispatch").addHandler(Names())
    cases = [
        (lambda: make_mesh("data=3"), "needs 3 devices but there are 8"),
        (lambda: make_mesh("data=4,batch=2"), "unknown axis 'batch'"),
        (lambda: Trainer(config, train.__class__(**{**train.__dict__, "batch_size": 12}), dataset,
                         mesh=make_mesh("data=8")), "batch size 12 is not a multiple of the data axis"),
        (lambda: Trainer(config, train, dataset, mesh=make_mesh("data=1,model=8")),
         "embed/user/embedding has 300 along dimension 0, not a multiple of mesh axes model"),
    ]
    for make, message in cases:
        try:
            make()
        except ShardingError as error:
            assert message in str(error), (message, str(error))
        else:
            raise AssertionError(f"no error for {message!r}")
    programs = [name for name in compiled if not any(op in name for op in (
        "convert_element_type", "iota", "add", "multiply", "negative", "exp2", "unstack"))]
    assert not programs, programs
    assert compiled, "JAX logged no compilation at all: the check above would see nothing"
    # the documented fix: tables padded to a multiple of the model axis
    _, padded, _ = tiny_run(embedding_row_multiple=8)
    trainer = Trainer(padded, train, dataset, mesh=make_mesh("data=1,model=8"))
    assert shard_rows(trainer, "embed/user/embedding") == (304 // 8, padded.width)
    assert any("<lambda>" in name for name in compiled), compiled  # the sharded init shows in the log


def attention_per_device_block():
    """8 devices, data=4 x model=2: inside jit with sharded inputs, the attention op (the xla
    reference and an interpret-mode Pallas kernel) sees only [B/4, S, H/2, D] blocks, and its
    output and input gradients equal the op on the global arrays without a mesh."""
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from genrank_jax.kernels import attention as global_attention
    from genrank_jax.kernels import sharded
    from genrank_jax.sharding import make_mesh

    mesh = make_mesh("data=4,model=2")
    batch, seq, heads, dim = 8, 16, 4, 8
    keys = jax.random.split(jax.random.key(0), 6)
    q, k, v = (jax.random.normal(keys[i], (batch, seq, heads, dim)) for i in range(3))
    lengths = jax.random.randint(keys[3], (batch,), 4, seq + 1)
    arrays = dict(lengths=lengths, num_candidates=jnp.minimum(lengths // 3, 4),
                  positions=jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq)),
                  timestamps=-jnp.abs(jax.random.normal(keys[4], (batch, seq))) * 1e4,
                  alibi_slopes=jnp.linspace(0.5, 0.05, heads), time_slopes=jnp.linspace(1e-4, 1e-5, heads))
    weights = jax.random.normal(keys[5], (batch, seq, heads, dim))
    seen = []

    def recording_op(q, k, v, **kw):
        seen.append(q.shape)
        return global_attention(q, k, v, **kw)

    sharded.attention_op = recording_op
    place = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
    block = P("data", None, "model", None)
    on_mesh = dict(q=place(q, block), k=place(k, block), v=place(v, block),
                   **{name: place(x, P("data") if x.shape[0] == batch else P()) for name, x in arrays.items()})
    for impl, interpret in (("xla", False), ("pallas_triton", True)):
        def loss(q, k, v, rest, attend):
            out = attend(q, k, v, **rest, impl=impl, interpret=interpret)  # noqa: B023 - called in this iteration
            return jnp.sum(out * weights), out

        seen.clear()
        with jax.set_mesh(mesh):
            mesh_inputs = {n: x for n, x in on_mesh.items() if n not in "qkv"}
            (_, got), got_grads = jax.jit(jax.value_and_grad(
                lambda q, k, v, rest: loss(q, k, v, rest, sharded.attention), argnums=(0, 1, 2), has_aux=True))(
                on_mesh["q"], on_mesh["k"], on_mesh["v"], mesh_inputs)
        assert seen and set(seen) == {(batch // 4, seq, heads // 2, dim)}, (impl, seen)
        (_, want), want_grads = jax.value_and_grad(
            lambda q, k, v: loss(q, k, v, arrays, global_attention), argnums=(0, 1, 2), has_aux=True)(q, k, v)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-6, err_msg=impl)
        for name, a, b in zip("qkv", got_grads, want_grads):
            np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-6, err_msg=f"{impl} d{name}")


def process(index: str, count: str, port: str, out_path: str, log_dir: str = ""):
    """One of `count` processes on localhost: train on a data=2,model=2 mesh of all their devices,
    each process building only its rows of every batch; process 0 writes the final state."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=int(count), process_id=int(index))
    from genrank_jax.sharding import make_mesh
    from genrank_jax.training import Trainer

    dataset, config, train = tiny_run(log_dir=log_dir)
    trainer = Trainer(config, train, dataset, mesh=make_mesh("data=2,model=2"))
    assert trainer.rows.stop - trainer.rows.start == BATCH // int(count), trainer.rows
    trainer.fit()
    state = values(trainer)
    if jax.process_index() == 0:
        np.savez(out_path, **state, losses=np.asarray([h["loss"] for h in trainer.history]))
    jax.distributed.shutdown()



def probe_bank(out_path: str, index: str = "0", count: str = "1", port: str = "0"):
    """The probe bank over every device of all processes (with `count` > 1, joined on localhost):
    process 0 writes the eval logits of 7 probes."""
    if int(count) > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"localhost:{port}", num_processes=int(count), process_id=int(index))
    from genrank_jax.data.synthetic import SimulatorConfig, simulate
    from genrank_jax.leakage import InteractionLog, ProbeConfig, bank, devices

    feed = simulate(SimulatorConfig.preset("tests", num_users=120, num_items=90, requests_per_user=(4, 10)))
    log = InteractionLog.from_dataset(feed.dataset, task=["click", "like"])
    cutoff = float(np.quantile(log.timestamp, 0.8))
    config = ProbeConfig(dim=8, hidden=(16,), history=4, epochs=2, batch_size=64)
    features = {"factors": bank.as_feature("factors", feed.item_factors, log)}
    run = bank.prepare_run(log, log.rows_between(None, cutoff), log.rows_between(cutoff, None), features, config)
    seeds, slots = [0, 0, 1, 1, 2, 2, 3], [0, 1, 0, 1, 0, 1, 1]
    lay = devices.layout(len(seeds), "map")
    assert len(lay.devices) == len(jax.devices()) == 4, lay  # every device of every process
    logits = bank.train_and_predict(run, seeds, slots, parallel=True)
    if jax.process_index() == 0:
        np.save(out_path, logits)
    if int(count) > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
