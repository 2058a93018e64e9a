"""Token batches built on the accelerator: `SampleBuilder.build`, as jnp gathers over columns kept in device memory.

A host-built batch carries ~1,500 bytes per exposure (bench/bench_ingest.py --stage pipeline): at
the rate an H100 consumes preset small's steps that is ~130 GB/s from the host, and numpy builds
~1.5 M exposures/s. Here the log and catalog go to the device once; a batch sends only its
request indices ([B] int32) and one jitted call gathers every field there.

Columns on the device (E exposures, R requests, I items; int32 because jax runs without x64):
  request_starts [R + 1], user_start_row [R], model_user [R], request_gap_bucket [R]: int32
  request_of_row [E], item_ids [E]: int32      actions [E, A]: uint8
  time_hi, time_lo [E]: float32, t - t0 = time_hi + time_lo (see `DeviceSampleBuilder.__init__`)
  side [I, F]: int32                           content [I, C]: float32, or None when C = 0
  aggregates [E, K]: float32 (SampleBuilder.aggregates), or None when the layout builds none
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from genrank_jax.data.samples import SampleBuilder, SampleLayout
from genrank_jax.data.tokens import NO_ITEM, TokenBatch, TokenKind

PADDING_REQUEST = -1  # request index of a padding row (a batch row with no sample)


class DeviceColumns(NamedTuple):
    request_starts: jax.Array
    user_start_row: jax.Array
    model_user: jax.Array
    request_gap_bucket: jax.Array
    request_of_row: jax.Array
    item_ids: jax.Array
    actions: jax.Array
    time_hi: jax.Array
    time_lo: jax.Array
    side: jax.Array
    content: jax.Array | None
    aggregates: jax.Array | None


class DeviceSampleBuilder:
    """Builds the batches of `builder` (same requests in, same TokenBatch out) on one device.

    Int and 0/1 fields are bit-identical to `builder.build`; timestamps agree to about one float32
    ulp (see `__init__`). The host keeps the checks that need no batch (sizes, seq_len, slots).
    """

    def __init__(self, builder: SampleBuilder, device: jax.Device | None = None):
        data, log = builder.dataset, builder.dataset.interactions
        if log.num_exposures + builder.layout.max_candidates >= 2**31:
            raise ValueError(f"{log.num_exposures:,} exposures: device batches index rows with int32 (jax without x64)")
        # the checks validate_batch makes that the dataset's own validation does not: a trainer does
        # not pull device batches back to look at them (see Trainer.fit)
        if ((log.actions != 0) & (log.actions != 1)).any():
            raise ValueError("interactions.actions must be 0 or 1 (they are the labels)")
        content = data.catalog.content if data.spec.content_dim else None
        if content is not None and not np.isfinite(content).all():
            raise ValueError("catalog.content must be finite")
        if builder.aggregates is not None and not np.isfinite(builder.aggregates).all():
            raise ValueError("the aggregate features must be finite")
        self.builder, self.layout = builder, builder.layout
        self.device = device or jax.devices()[0]
        # Absolute times are float64 (~1.7e9 s: a float32 ulp there is 128 s). Relative to t0 and
        # split into float32 hi + lo, (hi_row - hi_request) + (lo_row - lo_request) is the host's
        # float32(t_row - t_request) to about 1 ulp: the hi difference is exact when the two times
        # are within 2x of each other from t0 (Sterbenz) and rounds by half an ulp otherwise, the lo
        # difference carries the bits hi dropped (lo's own rounding adds at most ~2^-48 of t - t0:
        # ~1e-8 s over a month). The tests and bench_ingest's device stage measured at most 1 ulp.
        t0 = log.timestamps.min() if log.num_exposures else 0.0
        offset = log.timestamps - t0
        hi = offset.astype(np.float32)
        lo = (offset - hi).astype(np.float32)
        starts = log.request_starts
        host = DeviceColumns(
            request_starts=starts.astype(np.int32), user_start_row=builder.user_start_row.astype(np.int32),
            model_user=log.model_users(log.request_users()).astype(np.int32),
            request_gap_bucket=builder.request_gap_bucket.astype(np.int32),
            request_of_row=builder.request_of_row.astype(np.int32), item_ids=log.item_ids.astype(np.int32),
            actions=log.actions.astype(np.uint8, copy=False), time_hi=hi, time_lo=lo,
            side=data.catalog.side_features.astype(np.int32, copy=False),
            content=None if content is None else content.astype(np.float32, copy=False),
            aggregates=None if builder.aggregates is None else builder.aggregates.astype(np.float32, copy=False))
        self.columns = jax.device_put(host, self.device)

    def build(self, requests: np.ndarray, seq_len: int, batch_size: int | None = None,
              candidate_slots: int | None = None) -> TokenBatch:
        """`SampleBuilder.build` on the device: a TokenBatch of jax arrays [batch_size, seq_len, ...]."""
        padded, candidate_slots = self.request_indices(requests, seq_len, batch_size, candidate_slots)
        return _build(self.columns, jax.device_put(padded, self.device), layout=self.layout, seq_len=seq_len,
                      candidate_slots=candidate_slots)

    def request_indices(self, requests: np.ndarray, seq_len: int, batch_size: int | None = None,
                        candidate_slots: int | None = None) -> tuple[np.ndarray, int]:
        """The host's part of `build`: its checks, then ([batch_size] int32 request indices, -1 on
        padding rows; the candidate slots, defaulted as SampleBuilder.build does)."""
        builder = self.builder
        requests = np.asarray(requests, np.int64)
        batch_size = batch_size or len(requests)
        if len(requests) > batch_size:
            raise ValueError(f"{len(requests)} requests do not fit a batch of {batch_size}")
        if requests.size and (requests.min() < 0 or requests.max() >= len(builder.candidate_count)):
            raise ValueError(f"request indices must lie in [0, {len(builder.candidate_count)})")
        counts = builder.token_counts(requests)
        if counts.size and counts.max() > seq_len:
            raise ValueError(f"a sample needs {counts.max()} tokens but seq_len is {seq_len}")
        most = int(np.minimum(builder.candidate_count[requests], self.layout.max_candidates).max(initial=0))
        if candidate_slots is None:
            candidate_slots = max(1, most)
        if most > candidate_slots:
            raise ValueError(f"a sample has {most} candidates but candidate_slots is {candidate_slots}")
        padded = np.full(batch_size, PADDING_REQUEST, np.int32)
        padded[:len(requests)] = requests
        return padded, candidate_slots


@functools.partial(jax.jit, static_argnames=("layout", "seq_len", "candidate_slots"))
def _build(c: DeviceColumns, requests: jax.Array, *, layout: SampleLayout, seq_len: int,
           candidate_slots: int) -> TokenBatch:
    """The vectorised SampleBuilder.build, line for line, over [B] request indices (-1: padding row)."""
    real = requests >= 0
    request = jnp.where(real, requests, 0)
    start = jnp.where(real, c.request_starts[request], 0)
    end = jnp.where(real, jnp.minimum(c.request_starts[request + 1], start + layout.max_candidates), 0)
    history_start = jnp.where(real, jnp.maximum(c.user_start_row[request], start - layout.max_history), 0)
    n, m = start - history_start, end - start
    item_organized = layout.organization == "item"
    h = 2 * n if item_organized else n
    token = jnp.arange(seq_len, dtype=jnp.int32)[None, :]
    in_history = token < h[:, None]
    in_candidates = ~in_history & (token < (h + m)[:, None])
    history_offset = token // 2 if item_organized else token
    rows = jnp.where(in_history, history_start[:, None] + history_offset,
                     jnp.where(in_candidates, start[:, None] + (token - h[:, None]), -1))
    history_kind = (jnp.where(token % 2 == 0, TokenKind.ITEM, TokenKind.ACTION) if item_organized
                    else TokenKind.EXPOSURE)
    kinds = jnp.where(in_history, history_kind,
                      jnp.where(in_candidates, TokenKind.CANDIDATE, TokenKind.PAD)).astype(jnp.int8)
    positions = jnp.where(in_history, token, jnp.where(in_candidates, h[:, None], 0))
    lengths = h + m
    first_request = jnp.where(n > 0, c.request_of_row[history_start], request)

    valid = rows >= 0
    safe_rows = jnp.where(valid, rows, 0)
    items = c.item_ids[safe_rows]
    has_item = valid & (kinds != TokenKind.ACTION)
    has_actions = (kinds == TokenKind.EXPOSURE) | (kinds == TokenKind.ACTION)
    taken = c.actions[safe_rows]
    actions = jnp.where(has_actions[..., None], taken, 0).astype(jnp.float32)
    labels = jnp.where((kinds == TokenKind.CANDIDATE)[..., None], taken, 0).astype(jnp.float32)
    item_rows = jnp.where(has_item, items, 0)
    side = jnp.where(has_item[..., None], c.side[item_rows], 0)
    if c.content is None:
        content = jnp.zeros(rows.shape + (0,), jnp.float32)
    else:
        content = jnp.where(has_item[..., None], c.content[item_rows], 0.0)
    row_request = c.request_of_row[safe_rows]
    request_index = jnp.minimum(jnp.where(valid, row_request - first_request[:, None], 0),
                                layout.num_request_slots - 1)
    gap_bucket = jnp.where(valid, c.request_gap_bucket[row_request], 0)
    # hi and lo differences apart, then summed: see DeviceSampleBuilder.__init__
    relative = ((c.time_hi[safe_rows] - c.time_hi[start][:, None])
                + (c.time_lo[safe_rows] - c.time_lo[start][:, None]))
    timestamps = jnp.where(valid, relative, 0.0)
    slot = jnp.where(valid, jnp.minimum(safe_rows - c.request_starts[row_request], layout.num_slots - 1), 0)
    slot_of_candidate = jnp.arange(candidate_slots, dtype=jnp.int32)[None, :]
    candidate_index = jnp.where(slot_of_candidate < m[:, None], (lengths - m)[:, None] + slot_of_candidate, seq_len)
    user_ids = jnp.where(real, c.model_user[request], 0)
    aggregates = None if c.aggregates is None else jnp.where(has_item[..., None], c.aggregates[safe_rows], 0.0)
    i32 = lambda x: x.astype(jnp.int32)
    return TokenBatch(
        user_ids=i32(user_ids), item_ids=i32(jnp.where(has_item, items, NO_ITEM)), kinds=kinds, actions=actions,
        side=i32(side), content=content, positions=i32(positions), request_index=i32(request_index),
        gap_bucket=i32(gap_bucket), slot=i32(slot), timestamps=timestamps, labels=labels, lengths=i32(lengths),
        num_candidates=i32(m), candidate_index=i32(candidate_index), aggregates=aggregates,
    )
