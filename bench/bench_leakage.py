"""Probe bank speed: parallel (one program) vs a loop over probes, FLOP/s vs matmul peak, LIS table.

In one run: the f32 matmul peak of this machine; for K = 8, 32, 64 probes, the steady-state epoch
time of the bank and of the loop (the first epoch of each compiles; the faster of the second and
third is taken, for both, to damp a shared machine's noise) and their ratio; the bank's achieved
matmul FLOP/s and its fraction of the peak; the end-to-end time of the LIS table of three leak
kinds x two horizons x 8 seeds (features built, probes compiled and trained, AUCs computed).
Data: ml-100k (from --data-dir) or, without it, the simulator.
The bank runs as `genrank-jax lis` runs it: one JAX CPU device per core, a slice of the probes on
each (`--cpu-devices 1` measures it on one device); the loop trains one probe at a time on one device.

`--scale` measures instead the full LIS table (3 leak kinds x 2 horizons x 8 seeds, with placebos:
80 probes) on a log of a real catalog's size, the simulator's "catalog" preset (5M exposures,
10^6 items, 2 * 10^5 users; `--fraction` shrinks users and items for a quick run): wall time of
each phase, CPU time (user + sys, so a figure taken under contention can still be read), peak
resident memory and training rows/s per probe, with the load average before and after.

  python bench/bench_leakage.py --data-dir ../shared/data/ml-100k --out auto
  python bench/bench_leakage.py --scale --out auto
"""

from __future__ import annotations

import argparse
import os
import pathlib
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from genrank_jax.leakage import (  # noqa: E402
    InteractionLog,
    ProbeConfig,
    bank,
    leakage_impact,
    leaks,
    use_every_cpu_core,
)
from genrank_jax.leakage import probe as probe_lib  # noqa: E402
from genrank_jax.leakage.devices import layout  # noqa: E402


def matmul_peak(sizes=(512, 1024, 1536, 2048), repeats=5) -> float:
    """Best f32 matmul FLOP/s over a few square sizes."""
    best = 0.0
    for n in sizes:
        a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
        f = jax.jit(lambda x, y: x @ y)
        _, ms, _ = benchlib.measure(f, (a, a), repeats)
        best = max(best, 2 * n ** 3 / (ms / 1e3))
    return best


def load_log(args):
    from genrank_jax.data.sources import load_dataset
    if args.data_dir:
        dataset = load_dataset("movielens:100k", data_dir=args.data_dir)
        return "movielens:100k", InteractionLog.from_dataset(dataset, task="like")
    return "synthetic:default", InteractionLog.from_dataset(load_dataset("synthetic"), task="click")


def epoch_times(run, seeds, slots, parallel: bool) -> tuple[float, float]:
    """(wall seconds incl. compile, steady seconds of one epoch of all probes: per probe or per
    bank, the fastest epoch after the first, which compiles)."""
    marks = []
    start = time.perf_counter()
    bank.train_and_predict(run, seeds, slots, parallel=parallel, on_epoch=lambda _: marks.append(time.perf_counter()))
    wall = time.perf_counter() - start
    marks = np.array(marks).reshape(-1, run.config.epochs)  # [1 or K, epochs]
    return wall, float(np.sum(np.diff(marks, axis=1).min(axis=1)))


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (and its finished children) so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: kilobytes


def scale_table(args, header) -> int:
    """The full LIS table, with placebos, on the simulator's "catalog" preset; phase by phase."""
    from genrank_jax.data.synthetic import SimulatorConfig, simulate

    phases, clock, cpu = {}, time.perf_counter(), cpu_seconds()

    def mark(name):
        nonlocal clock, cpu
        now, used = time.perf_counter(), cpu_seconds()
        phases[name] = dict(wall_s=now - clock, cpu_s=used - cpu, peak_rss_gb=peak_rss_gb(), load=os.getloadavg())
        print(f"  {name}: {now - clock:.1f} s wall, {used - cpu:.1f} s CPU, peak RSS {peak_rss_gb():.2f} GB, "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
        clock, cpu = now, used

    preset = SimulatorConfig.preset("catalog")
    config = SimulatorConfig.preset("catalog", num_users=int(preset.num_users * args.fraction),
                                    num_items=int(preset.num_items * args.fraction))
    start, start_cpu = time.perf_counter(), cpu_seconds()
    feed = simulate(config)
    log = InteractionLog.from_dataset(feed.dataset, task="click")
    del feed
    mark("simulate")
    probe = ProbeConfig(epochs=args.epochs)
    cutoff = float(np.quantile(log.timestamp, 0.8))

    def build_leaks():
        features = {}
        for horizon in (7, 30):
            for name, build in leaks.BUILDERS.items():
                extra = {"probe": probe} if name == "future_item_embeddings" else {}
                features[f"{name}@{horizon}d"] = build(log, cutoff, horizon * 86400.0, **extra)
        mark("leaks")
        return features

    # the leaks are handed over, not kept here: leakage_impact drops its host copies once the
    # probes have theirs (the two next_item leaks are [5M, 32] each)
    kinds = {f"{name}@{horizon}d": "leak" for horizon in (7, 30) for name in leaks.BUILDERS}

    def progress(done, total):  # one line per trained group of probes: a run cut short still says how far it got
        print(f"    probes: {done}/{total} group-epochs, {time.perf_counter() - clock:.1f} s wall, "
              f"{cpu_seconds() - cpu:.1f} s CPU since the leaks, peak RSS {peak_rss_gb():.2f} GB, "
              f"load {os.getloadavg()[0]:.1f}", flush=True)

    report = leakage_impact(log, cutoff=cutoff, features=build_leaks(), seeds=args.seeds, probe=probe, kinds=kinds,
                            progress=progress)
    mark("probes")
    meta = report.metadata
    total_wall, total_cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
    probe_rows_per_s = meta["train_rows"] * probe.epochs / phases["probes"]["wall_s"]
    row = dict(kind="lis_scale", exposures=log.num_rows, items=log.num_items, users=log.num_users,
               train_rows=meta["train_rows"], eval_rows=meta["eval_rows"], epochs=probe.epochs, seeds=args.seeds,
               probes=meta["probes"], placebo_probes=meta["placebo_probes"], probe_groups=meta["probe_groups"],
               state_budget_mb=bank.STATE_BYTES / 2**20, table_optimizer=meta["probe"]["table_optimizer"],
               table_learning_rate=meta["probe"]["table_learning_rate"],
               state_mb_per_probe=bank.state_bytes(probe, probe_lib.ProbeSizes(log.num_items, log.num_users, 1, 32))
               / 1e6,
               total_wall_s=total_wall, total_cpu_s=total_cpu, peak_rss_gb=peak_rss_gb(),
               train_rows_per_s_per_probe=probe_rows_per_s, phases=phases, cores=len(os.sched_getaffinity(0)),
               table_markdown=report.to_markdown())
    print(f"LIS table at scale ({log.num_rows} exposures, {log.num_items} items, {log.num_users} users; "
          f"{meta['probes']} probes, {meta['placebo_probes']} placebos, {meta['probe_groups']} groups): "
          f"{total_wall:.1f} s wall, {total_cpu:.1f} s CPU (user+sys), peak RSS {peak_rss_gb():.2f} GB, "
          f"{probe_rows_per_s:,.0f} training rows/s per probe; load average {os.getloadavg()}")
    print(report.to_markdown())
    header["load_average_end"] = os.getloadavg()
    path = benchlib.write_rows("lis_scale", {**header, "data": f"synthetic:catalog x {args.fraction}"},
                               [row], args.out)
    if path:
        print(f"wrote {path}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="ml-100k folder (default: the simulator)")
    parser.add_argument("--probes", default="8,32,64")
    parser.add_argument("--out", default="auto", help='JSON path, "auto" (bench/results/) or "" (none)')
    parser.add_argument("--cpu-devices", type=int, default=None,
                        help="JAX CPU devices (default: one per core, as `genrank-jax lis`; 1: the bank on one device)")
    parser.add_argument("--scale", action="store_true", help="the LIS table at a real catalog's size (see above)")
    parser.add_argument("--fraction", type=float, default=1.0, help="--scale: users and items x this (default 1)")
    parser.add_argument("--epochs", type=int, default=1, help="--scale: probe epochs (default 1)")
    parser.add_argument("--seeds", type=int, default=8, help="--scale: seeds (default 8)")
    parser.add_argument("--state-budget-mb", type=int, default=None,
                        help="--scale: bytes of probe state trained at once (bank.STATE_BYTES; default 1024 MB)")
    args = parser.parse_args()
    cpu_devices = use_every_cpu_core(args.cpu_devices)  # before JAX starts
    if args.state_budget_mb:
        bank.STATE_BYTES = args.state_budget_mb << 20
    if args.scale:
        header = {**benchlib.run_header(), "load_average_start": os.getloadavg(), "cpu_devices": cpu_devices}
        print(f"{header}", flush=True)
        return scale_table(args, header)
    header = {**benchlib.run_header(), "load_average_start": os.getloadavg(), "cpu_devices": cpu_devices}
    source, log = load_log(args)
    print(f"{header}  data={source} rows={log.num_rows}  load average {os.getloadavg()}")
    peak = matmul_peak()
    print(f"f32 matmul peak: {peak / 1e9:.1f} GFLOP/s")
    rows = [dict(kind="matmul_peak", gflops=peak / 1e9)]
    out = args.out

    def save():  # after every row: a run stopped at a device's time limit keeps what it measured
        nonlocal out
        out = benchlib.write_rows("leakage", {**header, "data": source}, rows, out) or out
    save()

    cutoff = float(np.quantile(log.timestamp, 0.8))
    config = ProbeConfig(epochs=3)  # epoch 1 compiles, epochs 2 and 3 are timed
    rng = np.random.default_rng(0)
    features = {f"f{i}": bank.Feature(rng.standard_normal((log.num_items, 16)), "item") for i in range(7)}
    run = bank.prepare_run(log, log.rows_between(None, cutoff), log.rows_between(cutoff, None), features, config)
    flops_per_probe_epoch = (probe_lib.train_flops_per_example(config, run.sizes) * run.steps_per_epoch
                             * config.batch_size)
    for k in [int(x) for x in args.probes.split(",")]:
        seeds, slots = np.arange(k) // 8, np.arange(k) % 8
        # both modes start from init_bank's states for these K probes: compile it before either
        # is timed, so whichever runs first does not pay for both
        jax.block_until_ready(bank.init_bank(run, seeds, slots))
        bank_wall, bank_epoch = epoch_times(run, seeds, slots, parallel=True)
        loop_wall, loop_epoch = epoch_times(run, seeds, slots, parallel=False)
        gflops = flops_per_probe_epoch * k / bank_epoch / 1e9
        strategy = bank.resolve_strategy("auto")
        lay = layout(k, strategy)
        row = dict(kind="bank_vs_loop", probes=k, strategy=strategy, devices=len(lay.devices), chunk=lay.chunk,
                   bank_epoch_s=bank_epoch, loop_epoch_s=loop_epoch, speedup=loop_epoch / bank_epoch,
                   bank_wall_s=bank_wall, loop_wall_s=loop_wall, wall_speedup=loop_wall / bank_wall,
                   bank_gflops=gflops, fraction_of_peak=gflops * 1e9 / peak)
        rows.append(row)
        save()
        print(f"K={k:3d} ({len(lay.devices)} devices, stacks of {lay.chunk})  "
              f"epoch: bank {bank_epoch:6.2f} s  loop {loop_epoch:6.2f} s  speedup {row['speedup']:.2f}x | "
              f"wall incl. compile: bank {bank_wall:6.1f} s  loop {loop_wall:6.1f} s ({row['wall_speedup']:.2f}x) | "
              f"bank {gflops:.1f} GFLOP/s = {row['fraction_of_peak']:.0%} of peak")

    start = time.perf_counter()
    table_features, kinds = {}, {}
    for horizon in (7, 30):
        for name, build in leaks.BUILDERS.items():
            extra = {"probe": ProbeConfig()} if name == "future_item_embeddings" else {}
            table_features[f"{name}@{horizon}d"] = build(log, cutoff, horizon * 86400.0, **extra)
            kinds[f"{name}@{horizon}d"] = "leak"
    features_s = time.perf_counter() - start
    report = leakage_impact(log, cutoff=cutoff, features=table_features, seeds=8, kinds=kinds)
    total = time.perf_counter() - start
    rows.append(dict(kind="lis_table", leaks=3, horizons=2, seeds=8, probes=report.metadata["probes"],
                     features_s=features_s, total_s=total))
    print(f"LIS table (3 leaks x 2 horizons x 8 seeds = {report.metadata['probes']} probes): {total:.1f} s end to end "
          f"({features_s:.1f} s building leaks)")
    print(report.to_markdown())
    header["load_average_end"] = os.getloadavg()
    path = benchlib.write_rows("leakage", {**header, "data": source}, rows, out)
    if path:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
