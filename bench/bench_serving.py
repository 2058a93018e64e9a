"""Serving latency and throughput: cached scoring vs full recompute vs one candidate at a time.

    python bench/bench_serving.py --histories 256,1024 --candidates 100,500,1000 --out auto

One request = one user with N history exposures and M candidates (random items, actions and
timestamps; a freshly initialized model: speed does not depend on the weights). Three ways to
score it, timed request by request, interleaved so machine load hits all three alike:
  cached   `Scorer.score_requests` on a history cache encoded beforehand (the cache is reused
           across requests, as serving does); micro-batches of --rows-per-batch rows x
           --candidates-per-row slots, compiled once for all M
  full     the training-style forward pass on history + candidates (N + M tokens), jitted per shape
  single   the cached scorer fed one candidate per call (1 x 1 micro-batches), M calls per request
Encoding the history (once per user, `Scorer.encode`) is timed too and reported apart; the
`cached+encode` ratio charges it to every request (the worst case: no reuse at all).
Latency p50 / p99 over --requests requests; candidates/s = M / p50. Compilation is excluded
(warm-up request first). The target: at N = 1024, M = 500, cached >= 5x the candidates/s of full.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchlib import run_header, write_rows
from genrank_jax.data.schema import FeatureSpec
from genrank_jax.data.tokens import TokenBatch, TokenKind
from genrank_jax.model import GenRank
from genrank_jax.model.config import GenRankConfig
from genrank_jax.serving import Candidates, History
from genrank_jax.serving.scorer import Request, Scorer, requests_from


def random_request(spec: FeatureSpec, history: int, candidates: int, rng) -> tuple[History, Candidates]:
    """One user's history (N exposures, action-oriented tokens) and M candidates, all random."""
    exposures = lambda n: rng.integers(0, spec.num_items, (1, n)).astype(np.int32)
    times = -np.cumsum(rng.exponential(600.0, history))[::-1].astype(np.float32)[None]
    side = lambda n: np.zeros((1, n, len(spec.side_vocab_sizes)), np.int32)
    content = lambda n: rng.normal(size=(1, n, spec.content_dim)).astype(np.float32)
    hist = History(
        user_ids=np.array([int(rng.integers(0, spec.num_users))], np.int32), item_ids=exposures(history),
        kinds=np.full((1, history), TokenKind.EXPOSURE, np.int8),
        actions=(rng.random((1, history, spec.num_actions)) < 0.2).astype(np.float32), side=side(history),
        content=content(history), request_index=np.minimum(np.arange(history) // 20, 63)[None].astype(np.int32),
        gap_bucket=np.ones((1, history), np.int32), slot=(np.arange(history) % 20)[None].astype(np.int32),
        timestamps=times, lengths=np.array([history], np.int32))
    cands = Candidates(
        item_ids=exposures(candidates), side=side(candidates), content=content(candidates),
        slot=np.minimum(np.arange(candidates), 63)[None].astype(np.int32),
        num_candidates=np.array([candidates], np.int32),
        request_index=np.array([min(history // 20 + 1, 63)], np.int32), gap_bucket=np.array([3], np.int32),
        request_time=np.zeros(1, np.float32))
    return hist, cands


def full_batch(history: History, candidates: Candidates) -> TokenBatch:
    """The TokenBatch of history + candidates that the training-style forward pass sees."""
    n, m = history.item_ids.shape[1], candidates.item_ids.shape[1]
    per_candidate = lambda x: np.broadcast_to(np.asarray(x)[:, None], (1, m))
    join = lambda a, b: np.concatenate([np.asarray(a), np.asarray(b)], axis=1)
    return TokenBatch(
        user_ids=history.user_ids, item_ids=join(history.item_ids, candidates.item_ids),
        kinds=join(history.kinds, np.full((1, m), TokenKind.CANDIDATE, np.int8)),
        actions=join(history.actions, np.zeros((1, m, history.actions.shape[-1]), np.float32)),
        side=join(history.side, candidates.side), content=join(history.content, candidates.content),
        positions=join(np.arange(n)[None], np.full((1, m), n)).astype(np.int32),
        request_index=join(history.request_index, per_candidate(candidates.request_index)),
        gap_bucket=join(history.gap_bucket, per_candidate(candidates.gap_bucket)),
        slot=join(history.slot, candidates.slot),
        timestamps=join(history.timestamps, per_candidate(candidates.request_time)),
        labels=np.zeros((1, n + m, history.actions.shape[-1]), np.float32), lengths=np.array([n + m], np.int32),
        num_candidates=np.array([m], np.int32), candidate_index=(n + np.arange(m))[None].astype(np.int32))


def percentiles(times_ms):
    return statistics.median(times_ms), float(np.percentile(times_ms, 99))


def timed(fn):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return (time.perf_counter() - start) * 1e3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--histories", default="256,1024", help="history exposures N")
    parser.add_argument("--candidates", default="100,500,1000", help="candidates M per request")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--block", default="transformer", choices=["transformer", "hstu"])
    parser.add_argument("--rows-per-batch", type=int, default=8)
    parser.add_argument("--candidates-per-row", type=int, default=64)
    parser.add_argument("--requests", type=int, default=20, help="timed requests per (N, M) for cached and full")
    parser.add_argument("--single-requests", type=int, default=2, help="timed requests for one-at-a-time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON path, or 'auto' for bench/results/")
    args = parser.parse_args(argv)
    histories = [int(n) for n in args.histories.split(",")]
    candidate_counts = [int(m) for m in args.candidates.split(",")]
    header = dict(run_header(), load_average_before=os.getloadavg())
    print(header)
    spec = FeatureSpec(num_items=100_000, num_users=10_000, action_names=("click", "like", "share"),
                       side_vocab_sizes=(), content_dim=0)
    config = GenRankConfig.preset(args.preset, spec, block=args.block, attention_impl="xla",
                                  max_tokens=max(histories) + max(candidate_counts) + 1)
    model = GenRank(config, rngs=nnx.Rngs(args.seed))
    scorer = Scorer(model, rows_per_batch=args.rows_per_batch, candidates_per_row=args.candidates_per_row)
    single = Scorer(model, rows_per_batch=1, candidates_per_row=1)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, batch: nnx.merge(graphdef, state)(batch))
    rng = np.random.default_rng(args.seed)
    print(f"{'N':>5} {'M':>5} {'mode':>13} {'p50 ms':>9} {'p99 ms':>9} {'cand/s':>10} {'vs full':>8}")
    rows = []
    for history_len in histories:
        for count in candidate_counts:
            history, candidates = random_request(spec, history_len, count, rng)
            num_candidates = None if args.block == "transformer" else candidates.num_candidates
            cache = scorer.encode(history, num_candidates=num_candidates)
            requests = requests_from(candidates)
            batch = jax.tree.map(jnp.asarray, full_batch(history, candidates))
            # warm-up: compile every path outside the timings
            scorer.score_requests(cache, requests)
            jax.block_until_ready(forward(state, batch))
            single.score_requests(cache, [Request(item_ids=requests[0].item_ids[:1])])
            times = {"cached": [], "full": [], "encode": [], "single": []}
            for _ in range(args.requests):
                times["cached"].append(timed(lambda: scorer.score_requests(cache, requests)))  # noqa: B023 - called in this iteration
                times["full"].append(timed(lambda: forward(state, batch)))  # noqa: B023 - called in this iteration
                times["encode"].append(timed(lambda: scorer.encode(history, num_candidates=num_candidates).keys))  # noqa: B023 - called in this iteration
            for _ in range(args.single_requests):
                times["single"].append(timed(lambda: single.score_requests(cache, requests)))  # noqa: B023 - called in this iteration
            stats = {mode: percentiles(t) for mode, t in times.items()}
            full_rate = count / (stats["full"][0] / 1e3)
            modes = {
                "cached": stats["cached"], "full": stats["full"], "single": stats["single"],
                "cached+encode": (stats["cached"][0] + stats["encode"][0], stats["cached"][1] + stats["encode"][1]),
            }
            for mode, (p50, p99) in modes.items():
                rate = count / (p50 / 1e3)
                row = dict(header, history=history_len, candidates=count, mode=mode, block=args.block,
                           preset=args.preset, rows_per_batch=args.rows_per_batch,
                           candidates_per_row=args.candidates_per_row,
                           requests=args.single_requests if mode == "single" else args.requests,
                           p50_ms=p50, p99_ms=p99, candidates_per_s=rate, ratio_vs_full=rate / full_rate,
                           encode_p50_ms=stats["encode"][0], load_average=os.getloadavg())
                rows.append(row)
                print(f"{history_len:>5} {count:>5} {mode:>13} {p50:>9.2f} {p99:>9.2f} {rate:>10,.0f} "
                      f"{rate / full_rate:>7.2f}x")
    # one compilation per cache shape (history length), none per request size
    assert scorer.compilations() == len(histories), scorer.compilations()
    header["load_average_after"] = os.getloadavg()
    print(f"load average before {header['load_average_before']}, after {header['load_average_after']}")
    path = write_rows("serving", header, rows, args.out)
    if path:
        print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
