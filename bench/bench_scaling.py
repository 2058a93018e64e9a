"""Sharded training: step throughput over 1-8 CPU devices, and per-device memory at scale.

    python bench/bench_scaling.py --out auto

(1) Throughput: the same training step (preset --preset, global batch --batch-size) on meshes
    data=1, 2, 4, 8 of simulated CPU devices. On a CPU all simulated devices share the machine's
    cores (2 here), so this is a functional check of the sharded step, not a speedup measurement;
    the ratio to one device is printed from the same run.
(2) Sizing without allocation: the paper preset's training step with a --items-row item table
    (10^8) at a production global batch (--sizing-batch samples of --sizing-tokens tokens), lowered
    and compiled ahead of time for a --sizing-devices mesh of fake CPU devices from
    `jax.ShapeDtypeStruct`s that carry their shardings; XLA's memory analysis gives the bytes per
    device (arguments + temporaries + outputs not aliased to donated inputs), compared with one
    H100's 80 GB. The CPU compiler's buffer assignment stands in for the GPU's: same arrays and
    shardings, but a GPU compiler fuses differently, so read it as an estimate.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

H100_BYTES = 80e9


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["throughput", "sizing", "both"], default="both")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--devices", default="1,2,4,8")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--items", type=float, default=1e8, help="item-table rows for the sizing")
    parser.add_argument("--users", type=float, default=1e6, help="user-table rows for the sizing")
    parser.add_argument("--sizing-batch", type=int, default=2048, help="global batch (samples) for the sizing")
    parser.add_argument("--sizing-tokens", type=int, default=480, help="tokens per sample (the paper's 480)")
    parser.add_argument("--sizing-candidates", type=int, default=64)
    parser.add_argument("--sizing-devices", type=int, default=64)
    parser.add_argument("--sizing-meshes", default="data=8,model=8;data=8,model=8;data=64",
                        help="';'-separated meshes; each runs with the table layout of --sizing-tables")
    parser.add_argument("--sizing-tables", default="model;data,model;data,model",
                        help="';'-separated table axes, one per mesh")
    parser.add_argument("--out", default=None, help="JSON path, or 'auto' for bench/results/")
    return parser.parse_args(argv)


args = parse(sys.argv[1:])
# simulated CPU devices must be asked for before jax starts
devices_needed = max([int(n) for n in args.devices.split(",")] * (args.part != "sizing")
                     + [args.sizing_devices] * (args.part != "throughput"))
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count={devices_needed}").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchlib import run_header, write_rows  # noqa: E402
from genrank_jax import sharding  # noqa: E402
from genrank_jax.data.batching import BatchPlan, iterate_batches  # noqa: E402
from genrank_jax.data.samples import SampleBuilder, SampleLayout  # noqa: E402
from genrank_jax.data.synthetic import SimulatorConfig, simulate  # noqa: E402
from genrank_jax.model.baselines import build_model  # noqa: E402
from genrank_jax.model.config import GenRankConfig  # noqa: E402
from genrank_jax.training import TrainConfig, make_optimizer, train_step_fn  # noqa: E402


def model_and_optimizer(config, seed=0):
    def make():
        model = build_model(config, rngs=nnx.Rngs(seed))
        return model, nnx.Optimizer(model, make_optimizer(TrainConfig(steps=100)), wrt=nnx.Param)
    return make


def throughput(args) -> list[dict]:
    dataset = simulate(SimulatorConfig.preset("tests")).dataset
    config = GenRankConfig.preset(args.preset, dataset.spec, attention_impl="xla", embedding_row_multiple=8)
    builder = SampleBuilder(dataset, SampleLayout(max_history=56, max_candidates=8))
    requests = dataset.train_requests[builder.history_count[dataset.train_requests] > 0]
    batch = next(iterate_batches(builder, requests, BatchPlan(batch_size=args.batch_size, seed=0)))
    rows = []
    for count in map(int, args.devices.split(",")):
        mesh = sharding.make_mesh({"data": count}, devices=jax.devices()[:count])
        graphdef, state, state_shardings = sharding.init_sharded(model_and_optimizer(config), mesh)
        step = train_step_fn(graphdef, None, (state_shardings, sharding.batch_sharding(mesh)), donate=True)
        inputs = sharding.global_batch(batch, mesh, args.batch_size)
        with jax.set_mesh(mesh):
            started = time.perf_counter()
            state, loss, _ = step(state, inputs)
            jax.block_until_ready(loss)
            first = time.perf_counter() - started
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                state, loss, _ = step(state, inputs)
                jax.block_until_ready(loss)
                times.append(time.perf_counter() - started)
        step_ms = float(np.median(times)) * 1e3
        rows.append(dict(kind="throughput", devices=count, mesh=sharding.describe(mesh), preset=args.preset,
                         batch_size=args.batch_size, seq_len=batch.seq_len, step_ms=step_ms,
                         first_step_s=first, exposures_per_s=batch.num_exposures() / (step_ms / 1e3),
                         loss=float(loss)))
        rows[-1]["speedup_vs_1"] = rows[0]["step_ms"] / step_ms
        print(f"{rows[-1]['mesh']}: {step_ms:.1f} ms/step, {rows[-1]['exposures_per_s']:,.0f} exposures/s, "
              f"{rows[-1]['speedup_vs_1']:.2f}x one device (first step incl. compile {first:.1f} s)", flush=True)
    return rows


def abstract_batch(spec, batch_size: int, seq_len: int, candidates: int, batch_sharding):
    """ShapeDtypeStructs of a [batch_size, seq_len] TokenBatch (dtypes from a real tiny batch)."""
    tiny = simulate(SimulatorConfig.preset("tests")).dataset
    builder = SampleBuilder(tiny, SampleLayout(max_history=8, max_candidates=4))
    example = builder.build(tiny.train_requests[:2], 32, 2, candidate_slots=4)
    sizes = {"candidate_index": (batch_size, candidates)}

    def shaped(name, x):
        shape = sizes.get(name, (batch_size, seq_len)[:x.ndim] + x.shape[2:])
        return jax.ShapeDtypeStruct(shape, x.dtype, sharding=batch_sharding)

    return type(example)(**{f.name: shaped(f.name, getattr(example, f.name)) for f in dataclasses.fields(example)})


def sizing(args) -> list[dict]:
    tiny_spec = simulate(SimulatorConfig.preset("tests")).dataset.spec
    spec = dataclasses.replace(tiny_spec, num_items=int(args.items), num_users=int(args.users))
    config = GenRankConfig.preset("paper", spec, attention_impl="xla", embedding_row_multiple=args.sizing_devices,
                                  max_tokens=args.sizing_tokens)
    rows = []
    for mesh_spec, tables in zip(args.sizing_meshes.split(";"), args.sizing_tables.split(";")):
        mesh = sharding.make_mesh(mesh_spec, devices=jax.devices()[:args.sizing_devices])
        options = sharding.ShardingOptions(table_axes=tuple(tables.split(",")))
        graphdef, abstract = nnx.split(nnx.eval_shape(model_and_optimizer(config)))
        shardings = sharding.state_shardings(abstract, mesh, options)
        state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
        batch_sharding = sharding.batch_sharding(mesh)
        batch = abstract_batch(spec, args.sizing_batch, args.sizing_tokens, args.sizing_candidates, batch_sharding)
        step = train_step_fn(graphdef, None, (shardings, batch_sharding), donate=True)
        started = time.perf_counter()
        with jax.set_mesh(mesh):
            compiled = step.lower(state, batch).compile()
        seconds = time.perf_counter() - started
        memory = compiled.memory_analysis()
        state_bytes = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(abstract))
        per_device = (memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes
                      - memory.alias_size_in_bytes)
        rows.append(dict(
            kind="sizing", mesh=sharding.describe(mesh), devices=args.sizing_devices, table_axes=tables,
            preset="paper", items=int(args.items), users=int(args.users), batch_size=args.sizing_batch,
            seq_len=args.sizing_tokens, state_gb=state_bytes / 1e9,
            argument_gb=memory.argument_size_in_bytes / 1e9, temp_gb=memory.temp_size_in_bytes / 1e9,
            output_gb=memory.output_size_in_bytes / 1e9, alias_gb=memory.alias_size_in_bytes / 1e9,
            per_device_gb=per_device / 1e9, fraction_of_h100=per_device / H100_BYTES, compile_s=seconds))
        row = rows[-1]
        print(f"{row['mesh']} tables over {tables}: {row['per_device_gb']:.1f} GB per device "
              f"({row['fraction_of_h100']:.0%} of an H100's 80 GB; arguments {row['argument_gb']:.1f}, "
              f"temporaries {row['temp_gb']:.1f}; whole state {row['state_gb']:.0f} GB; compiled in {seconds:.0f} s)",
              flush=True)
    return rows


def main():
    header = dict(run_header(), load_average=os.getloadavg(), cpu_cores=os.cpu_count())
    rows = []
    if args.part in ("throughput", "both"):
        rows += throughput(args)
    if args.part in ("sizing", "both"):
        rows += sizing(args)
    path = write_rows("scaling", header, rows, args.out)
    if path:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
