"""Benchmark the attention op: Pallas GPU kernels vs the jnp reference vs jax.nn.dot_product_attention.

    python bench/bench_attention.py --seq-lens 1024,4096,8192,16384 --head-dims 64,128 --out auto

Inputs: bf16, B = max(1, --tokens // S) samples, H = --model-width // D heads; lengths uniform in
[S/2, S]; num_candidates = min(--candidates, length); ALiBi position and time bias on.

FLOPs are counted per jagged row over valid pairs only. With h = length - candidates, a sample
has h(h+1)/2 causal history pairs, candidates * h candidate-to-history pairs and `candidates`
diagonal pairs (the candidate x candidate block counts only its diagonal). Forward = 2 matmuls
= 2 * (D + Dv) FLOPs per valid pair and head (4 D for Dv = D); backward = 2.5 x forward (5
matmuls), so forward+backward = 3.5 x forward. Baselines compute on the whole padded S x S
tile, but are credited with the same useful FLOPs, so TFLOP/s compares time for equal work.

Baselines, fed the same mask and bias materialized as [B, H, S, S]:
  xla   - impl="xla", the f32 HIGHEST-precision jnp reference (the oracle, not tuned for speed);
  dpa   - jax.nn.dot_product_attention with that bias (implementation="cudnn" on GPU, XLA
          elsewhere), softmax only.
Sizes whose S^2 baselines would not fit (--baseline-memory-fraction of device memory) are skipped
and reported as such. On CPU the Pallas kernels run in interpret mode at small sizes only.
Memory: compiled `memory_analysis()` temp bytes per function and, on GPU, the device's
`memory_stats()` peak so far (a running maximum over the process, reported after each impl).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchlib import measure, run_header, write_rows
from genrank_jax.kernels import alibi_slopes, attention, relative_bias, valid_pairs


def valid_pair_count(lengths, candidates) -> np.ndarray:
    history = lengths - candidates
    return history * (history + 1) // 2 + candidates * history + candidates


def forward_flops(lengths, candidates, heads, head_dim, value_dim) -> float:
    return float(valid_pair_count(lengths, candidates).sum()) * heads * 2 * (head_dim + value_dim)


def make_problem(seq_len, head_dim, args, rng):
    batch = max(1, args.tokens // seq_len)
    heads = max(1, args.model_width // head_dim)
    lengths = rng.integers(seq_len // 2, seq_len + 1, size=batch)
    candidates = np.minimum(args.candidates, lengths)
    shape = (batch, seq_len, heads, head_dim)
    q, k, v = (jnp.asarray(rng.normal(size=shape), jnp.bfloat16) for _ in range(3))
    positions = np.tile(np.arange(seq_len), (batch, 1))
    for b in range(batch):
        positions[b, lengths[b] - candidates[b]:] = lengths[b] - candidates[b]
    times = -np.cumsum(rng.exponential(300.0, size=(batch, seq_len))[:, ::-1], axis=1)[:, ::-1]
    meta = dict(lengths=jnp.asarray(lengths, jnp.int32), num_candidates=jnp.asarray(candidates, jnp.int32),
                positions=jnp.asarray(positions, jnp.int32), timestamps=jnp.asarray(times, jnp.float32),
                alibi_slopes=alibi_slopes(heads), time_slopes=alibi_slopes(heads) * 0.5)
    return q, k, v, meta, lengths, candidates


def materialized_bias(meta, seq_len, dtype):
    """[B, H, S, S] bias with the mask folded in (-1e9 on invalid pairs), for dot_product_attention."""
    index = jnp.arange(seq_len)
    mask = valid_pairs(index[None, None, :, None], index[None, None, None, :],
                       meta["lengths"][:, None, None, None], meta["num_candidates"][:, None, None, None])
    per_head = lambda s: s[None, :, None, None]
    pos, times = meta["positions"], meta["timestamps"]
    bias = relative_bias(pos[:, None, :, None], pos[:, None, None, :], times[:, None, :, None],
                         times[:, None, None, :], per_head(meta["alibi_slopes"]), per_head(meta["time_slopes"]))
    return jnp.where(mask, bias, -1e9).astype(dtype)


def build(impl, problem, kind, interpret, on_gpu):
    """(forward fn, forward+backward fn, argument tuple) for one implementation."""
    q, k, v, meta, _, _ = problem
    if impl == "dpa":
        bias = materialized_bias(meta, q.shape[1], q.dtype)
        implementation = "cudnn" if on_gpu else "xla"

        def forward(q, k, v, bias):
            return jax.nn.dot_product_attention(q, k, v, bias=bias, implementation=implementation)
        args = (q, k, v, bias)
    else:
        def forward(q, k, v):
            return attention(q, k, v, **meta, kind=kind, impl=impl,
                             interpret=interpret and impl != "xla")
        args = (q, k, v)
    cotangent = jnp.ones(q.shape[:3] + (v.shape[-1],), q.dtype)

    def forward_backward(*args):
        out, vjp = jax.vjp(lambda q, k, v: forward(q, k, v, *args[3:]), *args[:3])
        return vjp(cotangent)
    return jax.jit(forward), jax.jit(forward_backward), args


def parse_args(argv, on_gpu):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq-lens", default="1024,4096,8192,16384" if on_gpu else "256")
    parser.add_argument("--head-dims", default="64,128")
    parser.add_argument("--impls", default="pallas_mosaic_gpu,pallas_triton,xla,dpa" if on_gpu
                        else "pallas_triton,pallas_mosaic_gpu,xla,dpa")
    parser.add_argument("--kinds", default="softmax", help="softmax,silu (dpa runs softmax only)")
    parser.add_argument("--tokens", type=int, default=16384 if on_gpu else 512,
                        help="tokens per batch: B = tokens // S")
    parser.add_argument("--model-width", type=int, default=1024 if on_gpu else 128,
                        help="H = width // D")
    parser.add_argument("--candidates", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--interpret", action="store_true", default=not on_gpu,
                        help="run Pallas kernels in interpret mode (default off a GPU)")
    parser.add_argument("--max-interpret-seq", type=int, default=512)
    parser.add_argument("--baseline-memory-fraction", type=float, default=0.5)
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds; configurations after it is spent are skipped")
    parser.add_argument("--exclude", default="",
                        help="S x D pairs to leave out, e.g. 8192x128 (measured by an earlier run)")
    parser.add_argument("--out", default=None,
                        help="JSON path, or 'auto' for bench/results/; rewritten after every row")
    return parser.parse_args(argv)


def device_memory(device) -> int:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    return 8 << 30  # CPU: assume 8 GiB for the S^2 baselines


def main(argv=None):
    device = jax.devices()[0]
    on_gpu = device.platform == "gpu"
    args = parse_args(argv, on_gpu)
    rng = np.random.default_rng(0)
    header = dict(run_header(), interpret=args.interpret)
    print(json.dumps(header))
    print(f"{'kind':8} {'S':>6} {'D':>4} {'impl':18} {'fwd ms':>9} {'TFLOP/s':>8} {'f+b ms':>9} "
          f"{'TFLOP/s':>8} {'temp MiB':>9} {'vs dpa':>7} {'vs xla':>7}")
    rows, started, out = [], time.perf_counter(), args.out
    excluded = {tuple(map(int, pair.split("x"))) for pair in args.exclude.split(",") if pair}
    for kind in args.kinds.split(","):
        for seq_len in map(int, args.seq_lens.split(",")):
            for head_dim in map(int, args.head_dims.split(",")):
                if (seq_len, head_dim) in excluded:
                    continue
                problem = make_problem(seq_len, head_dim, args, rng)
                batch, heads = problem[0].shape[0], problem[0].shape[2]
                flops = forward_flops(problem[4], problem[5], heads, head_dim, head_dim)
                square_bytes = batch * heads * seq_len * seq_len * 4
                config_rows = []
                for impl in args.impls.split(","):
                    row = dict(header, kind=kind, seq_len=seq_len, head_dim=head_dim, batch=batch,
                               heads=heads, impl=impl, fwd_flops=flops, fwd_bwd_flops=3.5 * flops)
                    skip = None
                    if args.time_budget and time.perf_counter() - started > args.time_budget:
                        skip = f"time budget of {args.time_budget} s spent"
                    elif impl == "dpa" and kind != "softmax":
                        skip = "dot_product_attention has no SiLU attention"
                    elif impl in ("xla", "dpa") and 10 * square_bytes > (
                            args.baseline_memory_fraction * device_memory(device)):
                        skip = f"S^2 baseline needs ~{10 * square_bytes / 2**30:.1f} GiB"
                    elif impl.startswith("pallas") and args.interpret and seq_len > args.max_interpret_seq:
                        skip = f"interpret mode is limited to S <= {args.max_interpret_seq}"
                    if skip is None:
                        try:
                            fwd, fwd_bwd, call_args = build(impl, problem, kind, args.interpret, on_gpu)
                            row["fwd_compile_s"], row["fwd_ms"], row["fwd_temp_bytes"] = measure(
                                fwd, call_args, args.repeats)
                            row["fwd_bwd_compile_s"], row["fwd_bwd_ms"], row["fwd_bwd_temp_bytes"] = measure(
                                fwd_bwd, call_args, args.repeats)
                            row["fwd_tflops"] = flops / row["fwd_ms"] / 1e9
                            row["fwd_bwd_tflops"] = 3.5 * flops / row["fwd_bwd_ms"] / 1e9
                            stats = device.memory_stats() if on_gpu else None
                            if stats:
                                row["device_peak_bytes_so_far"] = stats.get("peak_bytes_in_use")
                        except Exception as error:  # report the failure, keep benchmarking
                            skip = f"failed: {type(error).__name__}: {str(error)[:200]}"
                    if skip:
                        row["skipped"] = skip
                    config_rows.append(row)
                    # Saved as soon as measured: a run stopped at its time limit keeps its rows.
                    out = write_rows("attention", header, rows + config_rows, out) or out
                for row in config_rows:
                    for baseline in ("dpa", "xla"):
                        base = next((r for r in config_rows if r["impl"] == baseline and "fwd_ms" in r), None)
                        if base and "fwd_ms" in row:
                            row[f"fwd_speedup_vs_{baseline}"] = base["fwd_ms"] / row["fwd_ms"]
                            row[f"fwd_bwd_speedup_vs_{baseline}"] = base["fwd_bwd_ms"] / row["fwd_bwd_ms"]
                    print_row(row)
                rows.extend(config_rows)
    path = write_rows("attention", header, rows, out)
    if path:
        print(f"wrote {len(rows)} rows to {path}")
    return rows


def print_row(row):
    prefix = f"{row['kind']:8} {row['seq_len']:>6} {row['head_dim']:>4} {row['impl']:18}"
    if "skipped" in row:
        print(f"{prefix} skipped: {row['skipped']}")
        return
    temp = row.get("fwd_bwd_temp_bytes")
    ratio = lambda name: f"{row[name]:7.2f}" if name in row else f"{'-':>7}"
    print(f"{prefix} {row['fwd_ms']:9.3f} {row['fwd_tflops']:8.3g} {row['fwd_bwd_ms']:9.3f} "
          f"{row['fwd_bwd_tflops']:8.3g} {(temp or 0) / 2**20:9.1f} "
          f"{ratio('fwd_bwd_speedup_vs_dpa')} {ratio('fwd_bwd_speedup_vs_xla')}")


if __name__ == "__main__":
    main(sys.argv[1:])
