"""A user's own log at production size: preparing and loading it, and the input pipeline's speed.

    python bench/bench_ingest.py --stage prepare --rows 1e6,1e7,1e8 --out auto
    python bench/bench_ingest.py --stage pipeline --out auto
    python bench/bench_ingest.py --stage device --out auto

prepare: for each size, a Parquet log written by `write_synthetic_log` (10^6 users, 10^6 items:
long-tailed activity and popularity drawn from log-normals, 30 days, click ~5%, like ~1%; int64
raw ids), then `prepare_log` and the first `load_log` (records -> dataset, arrays saved) and a
second, memory-mapped load, each in its own subprocess so its peak RSS is its own. Rows: wall
and CPU seconds, peak RSS, sizes on disk.

pipeline: exposures/s of sample building and batching alone (the Trainer's own builder and batch
plan, preset small's layout; warmed up, median of 3 passes) next to the per-request loop it
replaced (tests/data/build_reference.py, in the same run), the training step's exposures/s on
this machine, and what an H100 would consume at 400 TFLOP/s given the step's FLOPs per exposure
(`step_flops`), with the ratio. Batches are built once more with `--workers N` background
processes to show how the pipeline scales.

device: batches built on the accelerator (genrank_jax.data.device_samples) over the same batches
as the pipeline stage (and, with --batch-sizes, larger ones): exposures/s of the host's part alone
(planning the epoch, then each batch's shape, checks and padded [B] request indices), of the
device builder end to end from planned groups (jitted and warmed per shape; a queue of 8 batches
in flight, as a training loop would hold; median of 3 passes) and of the numpy builder in the same
run, each beside the H100 figure. The timed batches (up to 300) are then compared with numpy's
(ints and 0/1 exact, timestamps in float32 ulps). Then Trainer.fit itself (its per-step loss check
included) with host and with device batches: --fit-steps steps after --fit-warmup steps, timed on
a second run over the same steps (every shape compiled), at each of --fit-batch-sizes.
--sim-users N: the benchmark simulator with N users (~240 exposures each) instead of --source,
built in memory (no TFDS: a lent GPU machine has none).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

from benchlib import run_header, write_rows

SCHEMA = """[columns]
user = "viewer"
item = "item_id"
time = "ts_ms"
time_unit = "ms"

[actions]
click = "click"
like = "like"
"""
H100_FLOPS = 400e12


def write_synthetic_log(folder: pathlib.Path, rows: int, users: int, items: int, seed: int = 0) -> pathlib.Path:
    """A Parquet log of `rows` exposures in row groups of 10^6, never more than one group in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "log.parquet"
    (folder / "schema.toml").write_text(SCHEMA)
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    user_cdf = np.cumsum(rng.lognormal(0, 1.5, users))
    item_cdf = np.cumsum(rng.lognormal(0, 2.0, items))
    partial, writer, step = folder / "log.parquet.partial", None, 1_000_000
    for start in range(0, rows, step):
        n = min(step, rows - start)
        user = np.minimum(np.searchsorted(user_cdf, rng.random(n) * user_cdf[-1]), users - 1)
        item = np.minimum(np.searchsorted(item_cdf, rng.random(n) * item_cdf[-1]), items - 1)
        ms = 1_700_000_000_000 + (start + np.sort(rng.integers(0, n, n))) * (30 * 86_400_000 // rows)
        table = pa.table({"viewer": user.astype(np.int64), "item_id": item.astype(np.int64), "ts_ms": ms,
                          "click": (rng.random(n) < 0.05).astype(np.uint8),
                          "like": (rng.random(n) < 0.01).astype(np.uint8)})
        writer = writer or pq.ParquetWriter(partial, table.schema)
        writer.write_table(table)
    writer.close()
    os.replace(partial, path)
    return path


def measured(code: str) -> dict:
    """Run `code` in a fresh interpreter: its wall and CPU seconds and its own peak RSS (GB; read
    inside the child: RUSAGE_CHILDREN's peak is the largest of all children so far), and what it printed."""
    code += "\nimport resource; print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"failed:\n{done.stderr[-3000:]}")
    printed, peak = done.stdout.strip().rsplit("peak_rss_kb", 1)
    return {"wall_s": round(time.perf_counter() - start, 1),
            "cpu_s": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 1),
            "peak_rss_gb": round(int(peak) / 1e6, 2), "printed": printed.strip()}


def folder_bytes(folder: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def prepare_rows(sizes: list[int], users: int, items: int, workdir: pathlib.Path) -> list[dict]:
    rows = []
    for size in sizes:
        folder = workdir / f"log-{size:.0e}"
        started = time.perf_counter()
        path = write_synthetic_log(folder, size, users, items)
        written = time.perf_counter() - started
        tfds = folder / "tfds"
        shutil.rmtree(tfds, ignore_errors=True)  # measure a first preparation, not a cache hit
        args = f"{str(path)!r}, {str(folder / 'schema.toml')!r}, tfds_dir={str(tfds)!r}"
        prepare = measured(f"from genrank_jax.data.own_log import prepare_log; prepare_log({args})")
        records = folder_bytes(tfds)
        load = measured(f"from genrank_jax.data.own_log import load_log; d = load_log({args}); "
                        "print(d.interactions.num_exposures, d.spec.num_users, d.spec.num_items)")
        mapped = measured(f"from genrank_jax.data.own_log import load_log; d = load_log({args}); "
                          "print(int(d.interactions.item_ids[-1]))")
        exposures, num_users, num_items = map(int, load.pop("printed").split()[-3:])
        row = dict(rows=size, users=users, items=items, parquet_gb=round(path.stat().st_size / 1e9, 3),
                   write_s=round(written, 1), prepare=prepare, records_gb=round(records / 1e9, 3), load=load,
                   mapped_load=mapped, loaded_arrays_gb=round((folder_bytes(tfds) - records) / 1e9, 3),
                   exposures=exposures, user_rows=num_users, item_rows=num_items)
        for stage in ("prepare", "load", "mapped_load"):
            row[stage].pop("printed", None)
        rows.append(row)
        print(f"{size:>12,} rows: parquet {row['parquet_gb']} GB; prepare {prepare['wall_s']} s "
              f"({prepare['cpu_s']} s CPU, peak {prepare['peak_rss_gb']} GB), records {row['records_gb']} GB; "
              f"first load {load['wall_s']} s (peak {load['peak_rss_gb']} GB); mapped load {mapped['wall_s']} s "
              f"(peak {mapped['peak_rss_gb']} GB)", flush=True)
    return rows


def step_flops(config, batch) -> float:
    """Training FLOPs of one batch (forward + backward = 3x forward): per block, the dense layers
    (q, k, v, o: 4 d^2; MLP: 2 r d^2; two FLOPs a multiply-add) on every real token, and attention
    (q.k and p.v: 4 d per attended pair) over the pairs the mask lets through."""
    d, ratio = config.width, config.mlp_ratio
    lengths, candidates = np.asarray(batch.lengths, np.int64), np.asarray(batch.num_candidates, np.int64)
    history = lengths - candidates
    pairs = history * (history + 1) // 2 + candidates * (history + 1)
    forward = config.num_blocks * (lengths.sum() * 2 * (4 + 2 * ratio) * d * d + pairs.sum() * 4 * d)
    return 3.0 * float(forward)


_WORKER = {}


def start_worker(source: str) -> None:
    """Pool initializer: each worker process loads the data, makes its trainer and plans the epoch once."""
    from genrank_jax.data.batching import plan_batches

    trainer = make_trainer(source)
    _WORKER.update(trainer=trainer, groups=plan_batches(trainer.builder, trainer.train_requests, trainer.plan))


def build_batches(span):
    """Worker: build `count` batches of the epoch's plan from batch `start`; (their exposures, CPU seconds)."""
    from genrank_jax.data.batching import batch_shape

    start, count = span
    builder, plan = _WORKER["trainer"].builder, _WORKER["trainer"].plan
    exposures, cpu = 0, time.process_time()
    for group in _WORKER["groups"][start:start + count]:
        seq_len, slots = batch_shape(builder, group)
        exposures += builder.build(group, seq_len, plan.batch_size, candidate_slots=slots).num_exposures()
    return exposures, time.process_time() - cpu


def make_trainer(source: str, **simulator):
    from genrank_jax.data import load_dataset
    from genrank_jax.data.batching import padded_max_tokens
    from genrank_jax.model.config import GenRankConfig
    from genrank_jax.training import TrainConfig, Trainer

    dataset = load_dataset(source, **simulator)
    # host: the device stage makes (and times) its own DeviceSampleBuilder
    train = TrainConfig(steps=10_000, batch_size=64, max_history=56, max_candidates=128, validation_fraction=0.0,
                        batch_building="host")
    config = GenRankConfig.preset("small", dataset.spec, attention_impl="xla",
                                  max_tokens=padded_max_tokens("action", 56, 128))
    return Trainer(config, train, dataset)


def timed_batches(build, groups, passes: int = 3) -> tuple[float, float]:
    """Median over `passes` of (exposures/s, CPU s per 10^6 exposures) building `groups`.

    Each batch is dropped once counted, as a training loop drops it after the step: keeping them
    all would time the kernel handing out fresh pages instead (4x slower).
    """
    rates, cpus = [], []
    for _ in range(passes):
        started, cpu, exposures = time.perf_counter(), time.process_time(), 0
        for group in groups:
            exposures += build(group).num_exposures()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        rates.append(exposures / seconds)
        cpus.append(cpu / exposures * 1e6)
    return statistics.median(rates), statistics.median(cpus)


def loop_reference():
    """The per-request loop SampleBuilder.build replaced (tests/data/build_reference.py), or None outside a checkout."""
    root = pathlib.Path(__file__).resolve().parent.parent
    if not (root / "tests" / "data" / "build_reference.py").exists():
        return None
    sys.path.insert(0, str(root))
    from tests.data.build_reference import reference_build

    return reference_build


def pipeline_rows(source: str, batches: int, steps: int, workers: int, warmup: int) -> list[dict]:
    import jax

    from genrank_jax.data.batching import batch_shape, plan_batches

    trainer = make_trainer(source)
    builder, plan = trainer.builder, trainer.plan
    groups = plan_batches(builder, trainer.train_requests, plan)
    if len(groups) < warmup + batches * max(workers, 1):
        raise SystemExit(f"{source} has {len(groups)} batches an epoch, fewer than --warmup + --batches x --workers")
    # the first ~100 batches of a process run 4-5x slower (fresh pages for every output array until
    # malloc's mmap threshold adapts): warmed up apart, as a long training run is
    shaped = [(group, batch_shape(builder, group)) for group in groups[:warmup + batches]]

    def build(item):
        group, (seq_len, slots) = item
        return builder.build(group, seq_len, plan.batch_size, candidate_slots=slots)

    timed_batches(build, shaped[:warmup], passes=1)
    pipeline, cpu_per_million = timed_batches(build, shaped[warmup:])
    exposures = flops = nbytes = 0
    for item in shaped[warmup:]:
        batch = build(item)
        exposures, flops = exposures + batch.num_exposures(), flops + step_flops(trainer.config, batch)
        nbytes += sum(np.asarray(array).nbytes for array in jax.tree_util.tree_leaves(batch))
    flops, bytes_per_exposure = flops / exposures, nbytes / exposures
    built = [build(item) for item in shaped[warmup:warmup + steps]]
    # the step alone, on batches already built (compiled once per length bucket first)
    for batch in built[:steps]:
        jax.block_until_ready(trainer._step(trainer.state, trainer._on_devices(batch)))
    started = time.perf_counter()
    for batch in built[:steps]:
        trainer.state, loss, _ = trainer._step(trainer.state, trainer._on_devices(batch))
    jax.block_until_ready(trainer.state)
    step_rate = sum(b.num_exposures() for b in built[:steps]) / (time.perf_counter() - started)
    h100 = H100_FLOPS / flops
    rows = [dict(source=source, measure="pipeline, 1 process", exposures_per_s=round(pipeline),
                 cpu_s_per_million=round(cpu_per_million, 2))]
    reference = loop_reference()
    if reference is not None:  # the baseline, in the same run
        def build_loop(item):
            group, (seq_len, slots) = item
            return reference(builder, group, seq_len, plan.batch_size, candidate_slots=slots)

        loop, loop_cpu = timed_batches(build_loop, shaped[warmup:], passes=1)
        rows.append(dict(source=source, measure="pipeline, per-request loop (before)", exposures_per_s=round(loop),
                         cpu_s_per_million=round(loop_cpu, 2)))
    rows += [dict(source=source, measure=f"training step, {jax.devices()[0].device_kind}",
                  exposures_per_s=round(step_rate)),
             dict(source=source, measure="H100 at 400 TFLOP/s (model FLOPs)", exposures_per_s=round(h100),
                  flops_per_exposure=round(flops), batch_bytes_per_exposure=round(bytes_per_exposure),
                  host_to_device_gb_per_s=round(h100 * bytes_per_exposure / 1e9, 1))]
    if workers > 1:
        import multiprocessing

        per = batches  # each worker as many batches as one pass of the single process
        with multiprocessing.get_context("spawn").Pool(workers, initializer=start_worker, initargs=(source,)) as pool:
            pool.map(build_batches, [(0, warmup)] * workers, chunksize=1)  # start-up, plans and warm-up apart
            rates, cpus = [], []
            for _ in range(3):  # median of 3, as for one process
                started = time.perf_counter()
                done = pool.map(build_batches, [(warmup + w * per, per) for w in range(workers)], chunksize=1)
                total = sum(exposures for exposures, _ in done)
                rates.append(total / (time.perf_counter() - started))
                cpus.append(sum(cpu for _, cpu in done) / total * 1e6)
            # CPU seconds per 10^6 exposures say what a worker costs whatever else shares the cores
            rows.append(dict(source=source, measure=f"pipeline, {workers} worker processes",
                             exposures_per_s=round(statistics.median(rates)),
                             cpu_s_per_million=round(statistics.median(cpus), 2)))
    for row in rows:
        ratio = row["exposures_per_s"] / h100
        row["ratio_to_h100"] = round(ratio, 5)
        cpu = f"   {row['cpu_s_per_million']:6.2f} CPU s / 10^6" if "cpu_s_per_million" in row else ""
        print(f"{row['measure']:<40}{row['exposures_per_s']:>14,} exposures/s   {ratio:9.5f} x the H100 figure{cpu}")
    print(f"preset small: {flops:,.0f} training FLOPs per exposure (batch 64, max_history 56, 128 candidates); "
          f"a built batch holds {bytes_per_exposure:,.0f} bytes per exposure: "
          f"{h100 * bytes_per_exposure / 1e9:,.1f} GB/s host to device at the H100 figure")
    return rows


def in_flight(batches, depth: int = 8):
    """Exposures of `batches` (an iterator of (device batch, exposures)), waiting on each batch once
    `depth` newer ones are queued, and on all at the end: the device works while the host dispatches."""
    import jax

    pending, exposures = collections.deque(), 0
    for batch, count in batches:
        pending.append(batch)
        exposures += count
        if len(pending) > depth:
            jax.block_until_ready(pending.popleft())
    jax.block_until_ready(list(pending))
    return exposures


def timestamp_ulps(host, device) -> float:
    """Largest |device - host| timestamp difference in float32 ulps of the host value (0 where both are 0)."""
    want, got = np.asarray(host.timestamps), np.asarray(device.timestamps)
    return float((np.abs(got - want) / np.spacing(np.abs(want).astype(np.float32))).max(initial=0.0))


def device_rows(source: str, batches: int, warmup: int, batch_sizes: list[int], sim_users: int | None,
                fit_sizes: list[int], fit_warmup: int, fit_steps: int) -> list[dict]:
    import dataclasses

    import jax

    from genrank_jax.data.batching import batch_shape, plan_batches, planned_figures
    from genrank_jax.data.device_samples import DeviceSampleBuilder

    started = time.perf_counter()
    if sim_users:
        source = f"synthetic:benchmark (num_users={sim_users:,})"
        trainer = make_trainer("synthetic:benchmark", num_users=sim_users)
    else:
        trainer = make_trainer(source)
    builder, log = trainer.builder, trainer.dataset.interactions
    made = time.perf_counter() - started
    started = time.perf_counter()
    device = DeviceSampleBuilder(builder)
    jax.block_until_ready(device.columns)
    put = time.perf_counter() - started
    column_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(device.columns))
    platform = f"{device.device.platform} ({device.device.device_kind})"
    print(f"{source}: {log.num_exposures:,} exposures, {log.num_requests:,} requests, {len(trainer.train_requests):,} "
          f"train requests; made in {made:.1f} s; columns on {platform}: {column_bytes / 1e9:.2f} GB in {put:.2f} s",
          flush=True)
    context = dict(source=source, exposures_in_log=log.num_exposures, backend=platform)
    rows = [dict(context, measure="columns to the device once", seconds=round(put, 3),
                 gigabytes=round(column_bytes / 1e9, 3))]
    for size in batch_sizes:
        plan = dataclasses.replace(trainer.plan, batch_size=size)
        scale = 64 / size  # larger batches: fewer of them, about as many exposures
        first, count = max(1, round(warmup * scale)), max(4, round(batches * scale))

        def host_part():  # what the host does per epoch when the device builds the batches
            groups = plan_batches(builder, trainer.train_requests, plan)  # noqa: B023 - called in this iteration
            for group in groups:
                seq_len, slots = batch_shape(builder, group)
                device.request_indices(group, seq_len, size, slots)  # noqa: B023 - called in this iteration
            return groups

        seconds = []
        for _ in range(3):
            begun = time.perf_counter()
            groups = host_part()
            seconds.append(time.perf_counter() - begun)
        epoch_exposures = int(np.minimum(builder.candidate_count[np.concatenate(groups)],
                                         builder.layout.max_candidates).sum())
        host_side = epoch_exposures / statistics.median(seconds)
        if len(groups) < first + count:
            raise SystemExit(f"{source} has {len(groups)} batches of {size} an epoch, fewer than the {first + count} "
                             "this size needs (--warmup + --batches, scaled by 64 / batch size)")
        shaped = [(group, batch_shape(builder, group)) for group in groups[:first + count]]
        timed = shaped[first:]

        def on_device(items):
            for group, (seq_len, slots) in items:
                yield (device.build(group, seq_len, size, candidate_slots=slots),  # noqa: B023 - called in this iteration
                       planned_figures(builder, group, seq_len, size)[0])  # noqa: B023 - called in this iteration

        in_flight(on_device(timed))  # compiles each (seq_len, slots) shape once
        rates = []
        for _ in range(3):
            begun = time.perf_counter()
            rates.append(in_flight(on_device(timed)) / (time.perf_counter() - begun))
        device_rate = statistics.median(rates)

        def build(item):
            group, (seq_len, slots) = item
            return builder.build(group, seq_len, size, candidate_slots=slots)  # noqa: B023 - called in this iteration

        timed_batches(build, shaped[:first], passes=1)  # the host builder's warm-up, as in the pipeline stage
        host_rate, host_cpu = timed_batches(build, timed)
        exposures = flops = nbytes = 0
        worst_ulps, identical = 0.0, True
        for item in timed[:300]:  # the timed batches (the first 300) against the numpy ones
            host_batch, device_batch = build(item), next(on_device([item]))[0]
            for field in dataclasses.fields(host_batch):
                want, got = getattr(host_batch, field.name), getattr(device_batch, field.name)
                if want is None or got is None:  # aggregates, when the layout builds none
                    identical &= want is None and got is None
                elif field.name != "timestamps":
                    got = np.asarray(got)
                    identical &= want.dtype == got.dtype and np.array_equal(want, got)
            worst_ulps = max(worst_ulps, timestamp_ulps(host_batch, device_batch))
            exposures += host_batch.num_exposures()
            flops += step_flops(trainer.config, host_batch)
            nbytes += sum(np.asarray(a).nbytes for a in jax.tree_util.tree_leaves(host_batch))
        h100 = H100_FLOPS / (flops / exposures)
        size_rows = [
            dict(context, batch_size=size, measure="host side alone (plan, shapes, request indices)",
                 exposures_per_s=round(host_side), batches_per_epoch=len(groups)),
            dict(context, batch_size=size, measure=f"device builder, {device.device.platform}",
                 exposures_per_s=round(device_rate), batches=len(timed), batches_checked=len(timed[:300]),
                 identical_to_host=bool(identical), timestamp_max_ulps=worst_ulps),
            dict(context, batch_size=size, measure="host builder (numpy), 1 process", exposures_per_s=round(host_rate),
                 cpu_s_per_million=round(host_cpu, 2)),
            dict(context, batch_size=size, measure="H100 at 400 TFLOP/s (model FLOPs)", exposures_per_s=round(h100),
                 flops_per_exposure=round(flops / exposures), batch_bytes_per_exposure=round(nbytes / exposures)),
        ]
        for row in size_rows:
            row["ratio_to_h100"] = round(row["exposures_per_s"] / h100, 5)
        size_rows[1]["ratio_to_host_builder"] = round(device_rate / host_rate, 2)
        for row in size_rows:
            print(f"batch {size:>5}  {row['measure']:<48}{row['exposures_per_s']:>15,} exposures/s "
                  f"{row['ratio_to_h100']:10.4f} x the H100 figure", flush=True)
        print(f"batch {size:>5}  device / host builder: {device_rate / host_rate:.2f}x; device batches identical "
              f"to numpy's: {identical} (ints, 0/1), timestamps within {worst_ulps:g} float32 ulps", flush=True)
        rows += size_rows
    for size in fit_sizes:
        rows += fit_rows(trainer, size, fit_warmup, fit_steps, context)
    return rows


def fit_rows(trainer, size: int, warmup: int, steps: int, context: dict) -> list[dict]:
    """Exposures/s of Trainer.fit with host and with device batches of `size` (steps after `warmup`)."""
    import dataclasses

    from genrank_jax.data.batching import plan_batches
    from genrank_jax.training import Trainer

    rows, rates = [], {}
    for mode in ("host", "device"):
        train = dataclasses.replace(trainer.train_config, batch_size=size, batch_building=mode, warmup_steps=10)
        fitted = Trainer(trainer.config, train, trainer.dataset)
        groups = plan_batches(fitted.builder, fitted.train_requests, fitted.plan)[warmup:warmup + steps]
        if len(groups) < steps:
            raise SystemExit(f"fewer than --fit-warmup + --fit-steps batches of {size} in an epoch")
        exposures = int(sum(np.minimum(fitted.builder.candidate_count[g], fitted.layout.max_candidates).sum()
                            for g in groups))
        # every shape of the timed window compiled first: the window once untimed, then again (the
        # batches of a step are a function of the step alone, so rewinding serves the same ones)
        fitted.fit(steps=warmup + steps)
        fitted.step = warmup
        started = time.perf_counter()
        fitted.fit(steps=warmup + steps)
        rates[mode] = exposures / (time.perf_counter() - started)
        rows.append(dict(context, batch_size=size, measure=f"Trainer.fit, {mode} batches", steps=steps,
                         exposures_per_s=round(rates[mode]), final_loss=fitted.history[-1]["loss"]))
        print(f"batch {size:>5}  Trainer.fit with {mode} batches: {rates[mode]:>14,.0f} exposures/s "
              f"({steps} steps after {warmup})", flush=True)
    rows[-1]["ratio_to_host_batches"] = round(rates["device"] / rates["host"], 2)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=["prepare", "pipeline", "device"], required=True)
    parser.add_argument("--rows", default="1e6,1e7", help="log sizes for --stage prepare")
    parser.add_argument("--users", type=float, default=1e6)
    parser.add_argument("--items", type=float, default=1e6)
    parser.add_argument("--workdir", default="/tmp/genrank_ingest", help="where the logs and prepared data go")
    parser.add_argument("--source", default="synthetic:benchmark", help="dataset of --stage pipeline and device")
    parser.add_argument("--sim-users", type=int, default=None,
                        help="--stage device: the benchmark simulator with this many users (~240 exposures each)")
    parser.add_argument("--batch-sizes", default="64", help="--stage device: batch sizes (64 is the pipeline stage's)")
    parser.add_argument("--fit-batch-sizes", default="64", help="--stage device: batch sizes of the Trainer.fit rows "
                                                                "('' for none)")
    parser.add_argument("--fit-steps", type=int, default=30, help="--stage device: Trainer.fit steps timed")
    parser.add_argument("--fit-warmup", type=int, default=10, help="--stage device: Trainer.fit steps first, untimed")
    parser.add_argument("--batches", type=int, default=300, help="batches timed (median of 3 passes)")
    parser.add_argument("--warmup", type=int, default=200, help="batches built first, untimed")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=None, help="JSON file, or 'auto' for bench/results/")
    args = parser.parse_args()
    header = run_header()
    header["load_average_start"] = os.getloadavg()
    wall, cpu = time.perf_counter(), time.process_time()
    if args.stage == "prepare":
        sizes = [int(float(s)) for s in args.rows.split(",")]
        rows = prepare_rows(sizes, int(args.users), int(args.items), pathlib.Path(args.workdir))
    elif args.stage == "pipeline":
        rows = pipeline_rows(args.source, args.batches, args.steps, args.workers, args.warmup)
    else:
        sizes = [int(size) for size in args.batch_sizes.split(",")]
        fit_sizes = [int(size) for size in args.fit_batch_sizes.split(",") if size]
        rows = device_rows(args.source, args.batches, args.warmup, sizes, args.sim_users, fit_sizes, args.fit_warmup,
                           args.fit_steps)
    header["load_average_end"] = os.getloadavg()
    # this process's CPU seconds beside its wall seconds (CPU > wall: several threads were busy)
    header["wall_s"], header["cpu_s"] = round(time.perf_counter() - wall, 1), round(time.process_time() - cpu, 1)
    path = write_rows(f"ingest_{args.stage}", header, rows, args.out)
    if path:
        print(f"wrote {path}")
    print(json.dumps({"load_average": [header["load_average_start"], header["load_average_end"]],
                      "wall_s": header["wall_s"], "cpu_s": header["cpu_s"]}))


if __name__ == "__main__":
    main()
