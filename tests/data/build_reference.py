"""SampleBuilder.build as it was before it was vectorised (a Python loop over the requests),
kept verbatim as the reference the vectorised build must match bit for bit (test_samples.py)."""

from __future__ import annotations

import numpy as np

from genrank_jax.data.tokens import NO_ITEM, TokenBatch, TokenKind


def reference_build(self, requests: np.ndarray, seq_len: int, batch_size: int | None = None,
                    candidate_slots: int | None = None) -> TokenBatch:
    """SampleBuilder `self`'s batch of `requests` padded to [batch_size, seq_len] (see SampleBuilder.build).

    candidate_slots: M of `candidate_index` (default: the most candidates of any request here).
    """
    requests = np.asarray(requests, np.int64)
    batch_size = batch_size or len(requests)
    if len(requests) > batch_size:
        raise ValueError(f"{len(requests)} requests do not fit a batch of {batch_size}")
    counts = self.token_counts(requests)
    if counts.size and counts.max() > seq_len:
        raise ValueError(f"a sample needs {counts.max()} tokens but seq_len is {seq_len}")
    data, log, layout = self.dataset, self.dataset.interactions, self.layout
    num_actions = data.spec.num_actions
    num_side = len(data.spec.side_vocab_sizes)
    content_dim = data.spec.content_dim
    shape = (batch_size, seq_len)
    # rows[b, s]: the exposure row behind each token (-1: padding)
    rows = np.full(shape, -1, np.int64)
    kinds = np.zeros(shape, np.int8)
    positions = np.zeros(shape, np.int32)
    lengths = np.zeros(batch_size, np.int32)
    num_candidates = np.zeros(batch_size, np.int32)
    request_time = np.zeros(batch_size, np.float64)
    first_request = np.zeros(batch_size, np.int64)
    for b, request in enumerate(requests):
        start, end = log.request_starts[request], log.request_starts[request + 1]
        end = min(end, start + layout.max_candidates)
        history_start = max(self.user_start_row[request], start - layout.max_history)
        history = np.arange(history_start, start)
        n, m = len(history), end - start
        if layout.organization == "action":
            rows[b, :n] = history
            kinds[b, :n] = TokenKind.EXPOSURE
            positions[b, :n] = np.arange(n)
            h = n
        else:
            rows[b, 0:2 * n:2] = history
            rows[b, 1:2 * n:2] = history
            kinds[b, 0:2 * n:2] = TokenKind.ITEM
            kinds[b, 1:2 * n:2] = TokenKind.ACTION
            positions[b, :2 * n] = np.arange(2 * n)
            h = 2 * n
        rows[b, h:h + m] = np.arange(start, end)
        kinds[b, h:h + m] = TokenKind.CANDIDATE
        positions[b, h:h + m] = h
        lengths[b], num_candidates[b] = h + m, m
        request_time[b] = log.timestamps[start]
        first_request[b] = self.request_of_row[history_start] if n else request

    valid = rows >= 0
    safe_rows = np.where(valid, rows, 0)
    items = log.item_ids[safe_rows]
    has_item = valid & (kinds != TokenKind.ACTION)
    item_ids = np.where(has_item, items, NO_ITEM).astype(np.int32)
    has_actions = (kinds == TokenKind.EXPOSURE) | (kinds == TokenKind.ACTION)
    actions = np.where(has_actions[..., None], log.actions[safe_rows], 0).astype(np.float32)
    labels = np.where((kinds == TokenKind.CANDIDATE)[..., None], log.actions[safe_rows], 0).astype(np.float32)
    side = np.where(has_item[..., None], data.catalog.side_features[np.where(has_item, items, 0)], 0).astype(np.int32)
    if content_dim:
        content = np.where(has_item[..., None], data.catalog.content[np.where(has_item, items, 0)],
                           0).astype(np.float32)
    else:
        content = np.zeros(shape + (0,), np.float32)
    row_request = self.request_of_row[safe_rows]
    request_index = np.where(valid, row_request - first_request[:, None], 0)
    request_index = np.minimum(request_index, layout.num_request_slots - 1).astype(np.int32)
    gap_bucket = np.where(valid, self.request_gap_bucket[row_request], 0).astype(np.int32)
    timestamps = np.where(valid, log.timestamps[safe_rows] - request_time[:, None], 0).astype(np.float32)
    in_request = safe_rows - log.request_starts[row_request]
    slot = np.where(valid, np.minimum(in_request, layout.num_slots - 1), 0).astype(np.int32)
    if candidate_slots is None:
        candidate_slots = max(1, int(num_candidates.max()) if batch_size else 1)
    if num_candidates.size and num_candidates.max() > candidate_slots:
        raise ValueError(f"a sample has {num_candidates.max()} candidates but candidate_slots is {candidate_slots}")
    slot_of_candidate = np.arange(candidate_slots)[None, :]
    candidate_index = np.where(slot_of_candidate < num_candidates[:, None],
                               (lengths - num_candidates)[:, None] + slot_of_candidate,
                               seq_len).astype(np.int32)
    user_ids = np.zeros(batch_size, np.int32)
    user_ids[:len(requests)] = log.model_users(log.request_users()[requests])
    assert side.shape[-1] == num_side and labels.shape[-1] == num_actions
    return TokenBatch(
        user_ids=user_ids, item_ids=item_ids, kinds=kinds, actions=actions, side=side,
        content=content, positions=positions, request_index=request_index, gap_bucket=gap_bucket, slot=slot,
        timestamps=timestamps, labels=labels, lengths=lengths, num_candidates=num_candidates,
        candidate_index=candidate_index,
    )
