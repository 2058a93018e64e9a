"""A second statement of the attention contract: plain loops over (b, h, i, j) in float64 numpy.

Written from docs/design.md alone. The reference and every Pallas kernel share `masking.valid_pairs`
and `masking.relative_bias`, so a mistake there would pass every parity test; nothing here uses
them. Padding (token index >= length) is never read, so NaN or Inf there cannot leak in.
"""

from __future__ import annotations

import numpy as np


def attends(i: int, j: int, length: int, num_candidates: int) -> bool:
    """Does query i see key j? History queries see keys up to themselves; a candidate sees the
    whole history and itself, never another candidate; nothing at or past `length` takes part."""
    if i >= length or j >= length:
        return False
    history = length - num_candidates
    if i < history:
        return j <= i
    return j < history or j == i


def oracle_weights(q, k, *, lengths, num_candidates, positions=None, timestamps=None,
                   alibi_slopes=None, time_slopes=None, kind="softmax", scale=None):
    """Attention weights [B, H, S(query), S(key)] float64, 0 on every pair that does not attend."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    batch, seq_len, heads, head_dim = q.shape
    if positions is None:
        positions = np.tile(np.arange(seq_len), (batch, 1))
    if scale is None:
        scale = 1.0 / np.sqrt(head_dim)
    weights = np.zeros((batch, heads, seq_len, seq_len))
    for b in range(batch):
        length = int(lengths[b])
        for h in range(heads):
            for i in range(length):
                keys, logits = [], []
                for j in range(length):
                    if not attends(i, j, length, int(num_candidates[b])):
                        continue
                    logit = scale * float(np.dot(q[b, i, h], k[b, j, h]))
                    if alibi_slopes is not None:
                        distance = abs(int(positions[b, i]) - int(positions[b, j]))
                        logit -= float(alibi_slopes[h]) * distance
                    if time_slopes is not None:
                        gap = abs(float(timestamps[b, i]) - float(timestamps[b, j]))
                        logit -= float(time_slopes[h]) * np.log1p(gap)
                    keys.append(j)
                    logits.append(logit)
                logits = np.array(logits)
                if kind == "softmax":
                    row = np.exp(logits - logits.max())
                    row /= row.sum()
                elif kind == "silu":
                    row = logits / (1.0 + np.exp(-logits)) / length
                else:
                    raise ValueError(kind)
                weights[b, h, i, keys] = row
    return weights


def oracle_attention(q, k, v, **arguments):
    """Output [B, S, H, Dv] float64: sum over attended keys only; rows past the length are 0."""
    weights = oracle_weights(q, k, **arguments)
    v = np.asarray(v, np.float64)
    batch, seq_len, heads, _ = v.shape
    out = np.zeros(v.shape)
    for b in range(batch):
        for h in range(heads):
            for i in range(seq_len):
                for j in np.flatnonzero(weights[b, h, i]):
                    out[b, i, h] += weights[b, h, i, j] * v[b, j, h]
    return out
