"""Length-bucketed, padded batches over a split, deterministic per (seed, epoch).

Samples are shuffled, then sorted by token count inside windows of `window_batches` batches, so
each batch holds samples of similar length (little padding) while batch order stays random.
Each batch is padded to the batch's own longest sample rounded up to a length bucket: few
distinct shapes means few jit compilations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from genrank_jax.data.samples import SampleBuilder
from genrank_jax.data.tokens import TokenBatch


def bucket_length(tokens: int, multiple: int = 32) -> int:
    """Smallest of 32, 64, 96, 128, 192, 256, 384, 512, 768, ... (for multiple=32) that holds `tokens`."""
    size = multiple
    while size < tokens:
        if size < 4 * multiple:
            size += multiple
        elif size & (size - 1) == 0:  # a power of two: next is 1.5x
            size = size * 3 // 2
        else:  # 1.5 * 2^k: next is 2^(k+1)
            size = size * 4 // 3
    return size


def padded_max_tokens(organization: str, max_history: int, max_candidates: int) -> int:
    """Longest padded sequence a batch can have: the bucket of the longest possible sample.

    A model's position table (`GenRankConfig.max_tokens`) must cover this, not the raw count.
    """
    return bucket_length((2 if organization == "item" else 1) * max_history + max_candidates)


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    batch_size: int
    shuffle: bool = True
    seed: int = 0
    window_batches: int = 16
    drop_remainder: bool = False


def plan_batches(builder: SampleBuilder, requests: np.ndarray, plan: BatchPlan, epoch: int = 0) -> list[np.ndarray]:
    """Request index groups, one per batch, in the order they will be served."""
    requests = np.asarray(requests, np.int64)
    rng = np.random.default_rng([plan.seed, epoch])
    order = rng.permutation(len(requests)) if plan.shuffle else np.arange(len(requests))
    requests = requests[order]
    window = plan.batch_size * plan.window_batches
    groups = []
    for start in range(0, len(requests), window):
        chunk = requests[start:start + window]
        chunk = chunk[np.argsort(builder.token_counts(chunk), kind="stable")]
        groups += [chunk[i:i + plan.batch_size] for i in range(0, len(chunk), plan.batch_size)]
    if plan.drop_remainder:
        groups = [g for g in groups if len(g) == plan.batch_size]
    if plan.shuffle:
        groups = [groups[i] for i in rng.permutation(len(groups))]
    return groups


def batch_shape(builder: SampleBuilder, group: np.ndarray) -> tuple[int, int]:
    """(seq_len, candidate_slots) the batch of `group` is padded to: both rounded to a bucket."""
    seq_len = bucket_length(int(builder.token_counts(group).max()))
    most_candidates = int(np.minimum(builder.candidate_count[group], builder.layout.max_candidates).max())
    return seq_len, bucket_length(most_candidates, 8)


def planned_figures(builder: SampleBuilder, group: np.ndarray, seq_len: int, batch_size: int) -> tuple[int, float]:
    """(exposures, padding ratio) of the batch of `group` padded to [batch_size, seq_len]: what its
    TokenBatch.num_exposures() and padding_ratio() say, from the plan alone (for batches that stay
    on a device)."""
    exposures = int(np.minimum(builder.candidate_count[group], builder.layout.max_candidates).sum())
    return exposures, 1.0 - float(builder.token_counts(group).sum()) / max(1, batch_size * seq_len)


def iterate_batches(builder: SampleBuilder, requests: np.ndarray, plan: BatchPlan, epoch: int = 0,
                    skip: int = 0) -> Iterator[TokenBatch]:
    """Yield padded batches; `skip` resumes after that many batches of the same epoch."""
    for group in plan_batches(builder, requests, plan, epoch)[skip:]:
        seq_len, slots = batch_shape(builder, group)
        yield builder.build(group, seq_len, plan.batch_size, candidate_slots=slots)
