"""Parity harness: one backend against the f32 jnp reference, forward and gradients.

Every kernel test calls `check_parity`; it draws fresh random inputs from `seed`, runs the backend
and the reference (f32, Precision.HIGHEST), and compares the outputs and the vjp with a random
cotangent (gradients at 2x the forward tolerance), each row against its own magnitude.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from genrank_jax.kernels import alibi_slopes, attention

TOLERANCE = {jnp.dtype(jnp.float32): 1e-5, jnp.dtype(jnp.bfloat16): 2e-2}


@dataclasses.dataclass(frozen=True)
class Case:
    batch: int = 2
    seq_len: int = 40
    heads: int = 2
    head_dim: int = 32
    value_dim: int | None = None
    dtype: object = jnp.float32
    kind: str = "softmax"
    lengths: tuple[int, ...] | None = None  # None: random in [0, seq_len]
    num_candidates: tuple[int, ...] | None = None  # None: random in [0, length]
    with_positions: bool = True
    with_timestamps: bool = True
    with_alibi: bool = True
    with_time_bias: bool = True
    # "sorted": positions 0, 1, ... (candidates at the request's position), times increasing,
    # past ones negative; "ties": integer times and positions that repeat, candidates unordered
    # among themselves but after the history (both: the GPU kernels' ordered path);
    # "shuffled": both in random order (their general path, see kernels/ordering.py)
    order: str = "sorted"
    seed: int = 0


def make_inputs(case: Case):
    """Random q, k, v and jagged metadata for `case` (numpy RNG, never zeros)."""
    rng = np.random.default_rng(case.seed)
    value_dim = case.value_dim or case.head_dim
    shape = (case.batch, case.seq_len, case.heads)
    q = rng.normal(size=shape + (case.head_dim,))
    k = rng.normal(size=shape + (case.head_dim,))
    v = rng.normal(size=shape + (value_dim,))
    lengths = (np.array(case.lengths) if case.lengths is not None
               else rng.integers(0, case.seq_len + 1, size=case.batch))
    if case.num_candidates is not None:
        candidates = np.minimum(np.array(case.num_candidates), lengths)
    else:
        candidates = rng.integers(0, lengths + 1)
    arguments = dict(
        lengths=jnp.asarray(lengths, jnp.int32), num_candidates=jnp.asarray(candidates, jnp.int32),
    )
    positions, times = _positions_and_times(case, rng, lengths, candidates)
    if case.with_positions:
        arguments["positions"] = jnp.asarray(positions, jnp.int32)
    if case.with_timestamps:
        arguments["timestamps"] = jnp.asarray(times, jnp.float32)
    if case.with_alibi:
        arguments["alibi_slopes"] = alibi_slopes(case.heads) * rng.uniform(0.5, 2.0)
    if case.with_time_bias and case.with_timestamps:
        arguments["time_slopes"] = alibi_slopes(case.heads) * rng.uniform(0.5, 2.0)
    cotangent = rng.normal(size=shape + (value_dim,))
    cast = lambda x: jnp.asarray(x, case.dtype)
    return cast(q), cast(k), cast(v), arguments, jnp.asarray(cotangent, jnp.float32)


def _positions_and_times(case: Case, rng, lengths, candidates):
    """[B, S] int positions and float times in `case.order` (see `Case`)."""
    shape = (case.batch, case.seq_len)
    if case.order == "sorted":
        # candidates of one request share one position, as GenRank's tokens do
        positions = np.tile(np.arange(case.seq_len), (case.batch, 1))
        for b in range(case.batch):
            history = lengths[b] - candidates[b]
            positions[b, history:] = history
        if not case.with_timestamps:  # (no draw: the other inputs stay as they always were)
            return positions, None
        gaps = rng.exponential(300.0, size=shape)
        return positions, -np.cumsum(gaps[:, ::-1], axis=1)[:, ::-1]  # increasing, newest near 0
    # steps of 0 (ties) or more; integer seconds, so t + 1 is exact in f32
    positions = np.cumsum(rng.integers(0, 3, size=shape), axis=1) - 50
    times = np.cumsum(rng.choice([0, 0, 1, 7, 3600], size=shape), axis=1) - 20000.0
    if case.order == "shuffled":
        return rng.permuted(positions, axis=1), rng.permuted(times, axis=1)
    if case.order != "ties":
        raise ValueError(f"unknown order {case.order!r}")
    for b in range(case.batch):  # candidates: any order among themselves, after the history
        history, length = lengths[b] - candidates[b], lengths[b]
        if history and length > history:
            count = length - history
            positions[b, history:length] = positions[b, history - 1] + rng.integers(0, 3, count)
            times[b, history:length] = times[b, history - 1] + rng.choice([0, 1, 60], count)
    return positions, times


def run(impl, case: Case, *, interpret: bool, block_sizes=None):
    """Output and (dq, dk, dv) of `impl` on `case`'s inputs, all as float32 numpy."""
    q, k, v, arguments, cotangent = make_inputs(case)
    if impl == "xla":  # the oracle: f32 inputs, highest precision
        q, k, v = (x.astype(jnp.float32) for x in (q, k, v))

    def forward(q, k, v):
        return attention(q, k, v, **arguments, kind=case.kind, impl=impl, interpret=interpret,
                         block_sizes=block_sizes)

    out, vjp = jax.vjp(forward, q, k, v)
    grads = vjp(cotangent.astype(out.dtype))
    as_np = lambda x: np.asarray(x.astype(jnp.float32))
    return as_np(out), tuple(as_np(g) for g in grads)


def assert_rows_close(got, want, tolerance: float, what: str) -> None:
    """Each row (last axis, one token of one head) within `tolerance` x that row's own magnitude.

    A global maximum would let an error on a short row (small outputs) hide behind a long one.
    Rows smaller than the tensor's root-mean-square (padding rows, dq of a query that sees one
    key, where p (dp - delta) cancels) are held to that RMS instead of their own ~0 magnitude.
    """
    got_rows = got.reshape(-1, got.shape[-1])
    want_rows = want.reshape(-1, want.shape[-1])
    floor = max(float(np.sqrt(np.mean(np.square(want_rows)))), 1e-30)
    scale = np.maximum(np.abs(want_rows).max(axis=1), floor)
    error = np.abs(got_rows - want_rows).max(axis=1) / scale
    bad = np.flatnonzero(~(error <= tolerance))  # NaN counts as bad
    if bad.size:
        index = [tuple(int(i) for i in np.unravel_index(row, want.shape[:-1])) for row in bad[:5]]
        raise AssertionError(
            f"{what}: {bad.size} of {len(error)} rows differ by more than {tolerance} x their "
            f"magnitude; worst {error[bad].max():.3g}; first rows (b, s, h) {index}")


def check_parity(impl, case: Case, *, interpret: bool, block_sizes=None):
    """Assert `impl` matches the reference on `case`, forward and all three gradients, per row."""
    out, grads = run(impl, case, interpret=interpret, block_sizes=block_sizes)
    want_out, want_grads = run("xla", case, interpret=False)
    atol = TOLERANCE[jnp.dtype(case.dtype)]
    assert_rows_close(out, want_out, atol, f"{impl} forward, {case}")
    for name, got, want in zip(("dq", "dk", "dv"), grads, want_grads):
        assert_rows_close(got, want, 2 * atol, f"{impl} {name}, {case}")
    assert np.isfinite(out).all() and all(np.isfinite(g).all() for g in grads)
