"""The public attention op: validation, defaults and backend dispatch.

Every backend computes the contract of docs/design.md ("The attention op"); see `reference.py` for the
plain statement. `impl=None` resolves per call from the default device (`selection.py`: the
platform's preferred backend, self-checked once per process); a named backend (`backends.py` holds
them) that cannot run raises `NotImplementedError` and is never silently replaced.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from genrank_jax.kernels import backends, selection
from genrank_jax.typing import AttentionOut, HeadSlopes, Keys, Lengths, Queries, TokenPositions, TokenTimes, Values

Impl = Literal["xla", "pallas_triton", "pallas_mosaic_gpu", "pallas_tpu"]
Kind = Literal["softmax", "silu"]

IMPLEMENTATIONS: tuple[str, ...] = backends.names("attention")


def unavailable_reason(impl: str, *, interpret: bool = False) -> str | None:
    """None when `impl` can run here, else a sentence saying why not."""
    backend = backends.lookup("attention", impl)
    if backend is None:
        return f"unknown impl {impl!r}; expected one of {backends.names('attention')} or None"
    return backend.unavailable_reason(interpret)


def default_impl(dtype=None) -> str:
    """The backend `impl=None` uses on the default device for `dtype` inputs (the jnp reference on CPU).

    On a GPU or TPU the preferred backend is self-checked against the reference the first time
    (`selection.py`); one that fails is passed over with a warning.
    """
    return selection.choose("attention", dtype)


def _check(name, array, shape, dtypes):
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
    if not any(jnp.issubdtype(array.dtype, d) for d in dtypes):
        raise TypeError(f"{name} must have a dtype in {dtypes}, got {array.dtype}")


def _concrete(x):
    """`x` as numpy when its value is known at trace time, else None (a tracer under jit)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_counts(lengths, num_candidates, seq_len: int) -> None:
    """Raise naming the rows whose concrete lengths / candidate counts are out of range."""
    lengths, num_candidates = _concrete(lengths), _concrete(num_candidates)
    if lengths is not None:
        bad = np.flatnonzero((lengths < 0) | (lengths > seq_len))
        if bad.size:
            raise ValueError(f"lengths must lie in [0, S={seq_len}]; rows {bad[:8].tolist()} have "
                             f"{lengths[bad[:8]].tolist()}")
    if num_candidates is not None:
        limit = lengths if lengths is not None else seq_len
        bad = np.flatnonzero((num_candidates < 0) | (num_candidates > limit))
        if bad.size:
            raise ValueError(f"num_candidates must lie in [0, lengths]; rows {bad[:8].tolist()} have "
                             f"{num_candidates[bad[:8]].tolist()} (lengths "
                             f"{np.broadcast_to(limit, num_candidates.shape)[bad[:8]].tolist()})")


def attention(
    q: Queries,
    k: Keys,
    v: Values,
    *,
    lengths: Lengths,
    num_candidates: Lengths | None = None,
    positions: TokenPositions | None = None,
    timestamps: TokenTimes | None = None,
    alibi_slopes: HeadSlopes | None = None,
    time_slopes: HeadSlopes | None = None,
    kind: Kind = "softmax",
    scale: float | None = None,
    impl: Impl | None = None,
    interpret: bool = False,
    block_sizes=None,
) -> AttentionOut:
    """Jagged causal attention with candidate masking and fused ALiBi position/time bias.

    q, k: [B, S, H, D]; v: [B, S, H, Dv]; lengths, num_candidates: [B] int32;
    positions: [B, S] int32 (default arange(S)); timestamps: [B, S] float32 relative seconds;
    alibi_slopes, time_slopes: [H] float32 or None. Returns [B, S, H, Dv], zero past `lengths`.

    Padding (token index >= lengths[b]) never reaches a valid output: q, k, v and timestamps
    there may hold anything, NaN and Inf included. Gradients flow to q, k, v only; positions,
    timestamps and both slopes are constants (every backend returns zero for them).
    Concrete `lengths` outside [0, S] or `num_candidates` outside [0, lengths] raise ValueError;
    traced ones (under jit) cannot be checked and are clipped into those ranges.
    `block_sizes` overrides a Pallas backend's tile sizes (ignored by `impl="xla"`, which has none).
    """
    if q.ndim != 4:
        raise ValueError(f"q must be [B, S, H, D], got shape {q.shape}")
    batch, seq_len, num_heads, head_dim = q.shape
    _check("k", k, q.shape, (jnp.floating,))
    if v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, S, H, Dv] with B, S, H = {q.shape[:3]}, got {v.shape}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    _check("lengths", lengths, (batch,), (jnp.integer,))
    if num_candidates is None:
        num_candidates = jnp.zeros((batch,), jnp.int32)
    _check("num_candidates", num_candidates, (batch,), (jnp.integer,))
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (batch, seq_len))
    _check("positions", positions, (batch, seq_len), (jnp.integer,))
    if timestamps is None:
        timestamps = jnp.zeros((batch, seq_len), jnp.float32)
        if time_slopes is not None:
            raise ValueError("time_slopes were given without timestamps")
    _check("timestamps", timestamps, (batch, seq_len), (jnp.floating,))
    for name, slopes in (("alibi_slopes", alibi_slopes), ("time_slopes", time_slopes)):
        if slopes is not None:
            _check(name, slopes, (num_heads,), (jnp.floating,))
    if kind not in ("softmax", "silu"):
        raise ValueError(f"kind must be 'softmax' or 'silu', got {kind!r}")
    if scale is None:
        scale = head_dim ** -0.5
    _check_counts(lengths, num_candidates, seq_len)
    lengths = jnp.clip(lengths.astype(jnp.int32), 0, seq_len)
    num_candidates = jnp.clip(num_candidates.astype(jnp.int32), 0, lengths)
    arguments = dict(
        lengths=lengths, num_candidates=num_candidates, positions=positions.astype(jnp.int32),
        timestamps=timestamps.astype(jnp.float32),
        alibi_slopes=None if alibi_slopes is None else alibi_slopes.astype(jnp.float32),
        time_slopes=None if time_slopes is None else time_slopes.astype(jnp.float32),
        kind=kind, scale=float(scale),
    )

    if impl is None:
        impl = default_impl(q.dtype)
    reason = unavailable_reason(impl, interpret=interpret)
    if reason is not None:
        raise NotImplementedError(reason)
    backend = backends.lookup("attention", impl)
    return backend(q, k, v, **arguments, interpret=interpret, block_sizes=block_sizes)
