"""Training-step throughput and memory: action-oriented (GenRank) vs item-oriented (HSTU-style).

    python bench/bench_organization.py --histories 256,1024 --candidates 128 --out auto

Both organizations tokenize the *same* samples (N history exposures, M candidates): N + M tokens
action-oriented, 2N + M item-oriented. Same block type, width, heads and attention backend; one
full optimizer step (forward, backward, AdamW) is timed after a separate compile, median of
--repeats runs. Throughput counts candidate exposures (the labelled ones) per second. Memory is the
compiled step's temp bytes (`memory_analysis()`); on a GPU also the device peak.
The paper reports +78.7% training speed for the organization alone; the target on a 2-core CPU is
a ratio >= 1.7 at N = 1024.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchlib import measure, run_header, write_rows
from genrank_jax.data.samples import SampleBuilder, SampleLayout
from genrank_jax.data.synthetic import SimulatorConfig, simulate
from genrank_jax.model.baselines import build_model
from genrank_jax.model.config import GenRankConfig
from genrank_jax.training import TrainConfig, make_optimizer, train_step_fn


def long_history_feed(history: int, candidates: int, users: int, seed: int):
    """A simulated feed whose requests have `candidates` exposures and users >= `history` earlier ones."""
    requests = history // candidates + 2
    return simulate(SimulatorConfig(num_users=users, num_items=5000, exposures_per_request=candidates,
                                     requests_per_user=(requests, requests), seed=seed)).dataset


def step_for(config: GenRankConfig, batch, seed: int):
    model = build_model(config, rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, make_optimizer(TrainConfig(steps=100)), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    step = train_step_fn(graphdef, None)
    return step, (state, jax.tree.map(jnp.asarray, batch))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--histories", default="256,1024", help="history exposures N per sample")
    parser.add_argument("--candidates", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--block", default="transformer", choices=["transformer", "hstu"])
    parser.add_argument("--attention-impl", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON path, or 'auto' for bench/results/")
    args = parser.parse_args(argv)
    header = run_header()
    print(header)
    print(f"{'N':>6} {'organization':>12} {'tokens':>7} {'step ms':>9} {'exposures/s':>12} {'temp MiB':>9} "
          f"{'speedup':>8}")
    rows = []
    for history in map(int, args.histories.split(",")):
        dataset = long_history_feed(history, args.candidates, users=args.batch_size * 2, seed=args.seed)
        by_org = {}
        for organization in ("item", "action"):
            layout = SampleLayout(max_history=history, max_candidates=args.candidates, organization=organization)
            builder = SampleBuilder(dataset, layout)
            # the same requests for both organizations: each user's last request
            requests = np.flatnonzero(builder.history_count >= history)[:args.batch_size]
            if len(requests) < args.batch_size:
                raise SystemExit(f"the simulated feed has too few users with {history} history exposures")
            tokens = int(builder.token_counts(requests).max())
            batch = builder.build(requests, tokens)
            config = GenRankConfig.preset(args.preset, dataset.spec, organization=organization, block=args.block,
                                          max_tokens=tokens, attention_impl=args.attention_impl)
            step, call_args = step_for(config, batch, args.seed)
            compile_s, ms, temp = measure(step, call_args, args.repeats)
            exposures = batch.num_exposures()
            row = dict(header, history=history, candidates=args.candidates, batch_size=args.batch_size,
                       organization=organization, tokens=tokens, block=args.block, preset=args.preset,
                       compile_s=compile_s, step_ms=ms, exposures_per_s=exposures / (ms / 1e3),
                       temp_bytes=temp)
            device = jax.devices()[0]
            stats = device.memory_stats() if device.platform == "gpu" else None
            if stats:
                row["device_peak_bytes_so_far"] = stats.get("peak_bytes_in_use")
            by_org[organization] = row
        by_org["action"]["speedup_vs_item"] = by_org["action"]["exposures_per_s"] / by_org["item"]["exposures_per_s"]
        by_org["action"]["memory_ratio_vs_item"] = ((by_org["action"]["temp_bytes"] or 0)
                                                    / max(1, by_org["item"]["temp_bytes"] or 1))
        for organization in ("item", "action"):
            row = by_org[organization]
            speedup = f"{row['speedup_vs_item']:.2f}x" if "speedup_vs_item" in row else "1.00x"
            print(f"{history:>6} {organization:>12} {row['tokens']:>7} {row['step_ms']:>9.1f} "
                  f"{row['exposures_per_s']:>12,.0f} {(row['temp_bytes'] or 0) / 2**20:>9.1f} {speedup:>8}")
            rows.append(row)
    path = write_rows("organization", header, rows, args.out)
    if path:
        print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
