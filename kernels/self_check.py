"""The self-check `impl=None` runs before first trusting a compiled backend on this hardware.

A backend that was never run on a device kind may fail to lower there, or lower and compute wrong
numbers. `check` runs it once on a small jagged batch (rows of length 0, 1 and lengths that are no
multiple of any tile; candidates, positions, timestamps and both slopes; seeded random inputs),
forward and, for a differentiable backend, the vjp, and compares both with the op's jnp reference
on the same inputs in f32, each row against its own magnitude (as tests/kernels/parity.py does):
1e-5 for f32 inputs, 2e-2 for 16-bit ones, twice that for gradients, both kinds (softmax, SiLU).
"""

from __future__ import annotations

import concurrent.futures
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from genrank_jax.kernels import backends
from genrank_jax.kernels.masking import alibi_slopes

KINDS = ("softmax", "silu")
HEADS, HEAD_DIM = 2, 32
# Full op: S = 24 crosses the interpreter's 16-row tiles and fills no GPU tile; one row of each
# edge case: full with candidates, empty, a single (candidate) token, a ragged one.
SEQ_LEN, LENGTHS, CANDIDATES = 24, (24, 0, 1, 17), (4, 0, 1, 3)
# Cached op: history cache of N rows, M candidate slots per sample.
CACHE_LEN, SLOTS, CACHE_LENGTHS, SLOT_COUNTS = 20, 5, (20, 0, 1, 13), (5, 2, 0, 1)
SEED = 0
MESSAGE_LIMIT = 400  # a lowering error can run to pages; the report keeps its start


def tolerance(dtype: Any) -> float:
    """The forward tolerance relative to a row's magnitude; gradients get twice this."""
    return 1e-5 if jnp.dtype(dtype).itemsize >= 4 else 2e-2


def check(backend: backends.Backend, dtype: Any) -> str | None:
    """None when `backend` (compiled) matches the reference on `dtype` inputs, else what went wrong.

    Runs in a fresh thread: jax's tracing state is per thread, so there the check executes eagerly
    even when `impl=None` is resolved while a caller traces under jit, grad or vmap.
    (`jax.ensure_compile_time_eval` cannot do this: it would also try to evaluate the primitives
    inside a Pallas kernel body, such as `program_id`.)
    """
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="genrank-self-check") as pool:
        return pool.submit(_check_eagerly, backend, dtype).result()


def _check_eagerly(backend: backends.Backend, dtype: Any) -> str | None:
    reference = backends.lookup(backend.op, backends.REFERENCE)
    try:
        for kind in KINDS:
            inputs, arguments = _CASES[backend.op](np.random.default_rng(SEED), kind)
            problem = _compare(backend, reference, inputs, arguments, dtype)
            if problem is not None:
                return f"{kind}: {problem}"
    except Exception as error:  # noqa: BLE001 - whatever a broken backend raises fails its check
        return _shorten(f"raised {type(error).__name__}: {error}")
    return None


def _compare(backend, reference, inputs: dict[str, np.ndarray], arguments: dict[str, Any],
             dtype: Any) -> str | None:
    """What differs between `backend` on `dtype` inputs and the reference on the same values in f32."""
    rounded = {name: jnp.asarray(x, dtype) for name, x in inputs.items()}  # the values both see
    exact = {name: x.astype(jnp.float32) for name, x in rounded.items()}
    cotangent = jnp.asarray(np.random.default_rng(SEED + 1).normal(size=inputs["v"].shape), dtype)

    def run(op, values):
        constants = {name: x for name, x in values.items() if name not in ("q", "k", "v")}  # caches

        def forward(q, k, v):
            return op(q, k, v, **constants, **arguments, interpret=False, block_sizes=None)
        primals = (values["q"], values["k"], values["v"])
        if not backend.differentiable:
            return forward(*primals), ()
        out, vjp = jax.vjp(forward, *primals)
        return out, vjp(jnp.asarray(cotangent, out.dtype))

    got, got_grads = run(backend, rounded)
    want, want_grads = run(reference, exact)
    if got.shape != want.shape:
        return f"output shape {got.shape}, the reference's {want.shape}"
    limit = tolerance(dtype)
    pairs = [("forward", got, want, limit)]
    pairs += [(f"d{name}", g, w, 2 * limit) for name, g, w in zip("qkv", got_grads, want_grads)]
    for what, a, b, allowed in pairs:
        error = _row_error(np.asarray(a, np.float32), np.asarray(b, np.float32))
        if not error <= allowed:  # NaN fails
            return (f"{what} differs from the reference by {error:.3g} x a row's magnitude "
                    f"(tolerance {allowed:g})")
    return None


def _row_error(got: np.ndarray, want: np.ndarray) -> float:
    """The largest error of a row (one token of one head) relative to that row's magnitude.

    A row smaller than the tensor's root-mean-square (padding, dq of a query that sees one key) is
    held to that RMS rather than to its own ~0 magnitude."""
    got, want = got.reshape(-1, got.shape[-1]), want.reshape(-1, want.shape[-1])
    floor = max(float(np.sqrt(np.mean(np.square(want)))), 1e-30)
    scale = np.maximum(np.abs(want).max(axis=1), floor)
    return float((np.abs(got - want).max(axis=1) / scale).max())


def _history_then_candidates(lengths, candidates, size: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """[B, size] positions (candidates share the position after their history) and increasing
    negative timestamps in seconds, as GenRank's tokens have them."""
    positions = np.tile(np.arange(size), (len(lengths), 1))
    for row, (length, count) in enumerate(zip(lengths, candidates)):
        positions[row, length - count:] = length - count
    gaps = rng.exponential(300.0, size=(len(lengths), size))
    return positions.astype(np.int32), (-np.cumsum(gaps[:, ::-1], axis=1)[:, ::-1]).astype(np.float32)


def _slopes(rng) -> dict[str, jax.Array]:
    base = alibi_slopes(HEADS)
    return dict(alibi_slopes=base * rng.uniform(0.5, 2.0), time_slopes=base * rng.uniform(0.25, 1.0))


def _attention_case(rng, kind: str):
    batch = len(LENGTHS)
    shape = (batch, SEQ_LEN, HEADS, HEAD_DIM)
    inputs = {name: rng.normal(size=shape) for name in ("q", "k", "v")}
    positions, timestamps = _history_then_candidates(LENGTHS, CANDIDATES, SEQ_LEN, rng)
    arguments = dict(lengths=jnp.asarray(LENGTHS, jnp.int32),
                     num_candidates=jnp.asarray(CANDIDATES, jnp.int32), positions=jnp.asarray(positions),
                     timestamps=jnp.asarray(timestamps), **_slopes(rng), kind=kind, scale=HEAD_DIM ** -0.5)
    return inputs, arguments


def _cached_case(rng, kind: str):
    batch = len(CACHE_LENGTHS)
    inputs = {name: rng.normal(size=(batch, SLOTS, HEADS, HEAD_DIM)) for name in ("q", "k", "v")}
    inputs.update(cache_keys=rng.normal(size=(batch, CACHE_LEN, HEADS, HEAD_DIM)),
                  cache_values=rng.normal(size=(batch, CACHE_LEN, HEADS, HEAD_DIM)))
    no_candidates = (0,) * batch  # the cache holds history only
    cache_positions, cache_timestamps = _history_then_candidates(CACHE_LENGTHS, no_candidates, CACHE_LEN, rng)
    cache_lengths = np.asarray(CACHE_LENGTHS, np.int32)
    arguments = dict(
        cache_lengths=jnp.asarray(cache_lengths), num_candidates=jnp.asarray(SLOT_COUNTS, jnp.int32),
        positions=jnp.broadcast_to(jnp.asarray(cache_lengths)[:, None], (batch, SLOTS)),
        cache_positions=jnp.asarray(cache_positions),
        timestamps=jnp.asarray(rng.uniform(0.0, 60.0, size=(batch, SLOTS)), jnp.float32),
        cache_timestamps=jnp.asarray(cache_timestamps), **_slopes(rng), kind=kind, scale=HEAD_DIM ** -0.5,
        normalizer=jnp.asarray(cache_lengths + np.asarray(SLOT_COUNTS), jnp.int32))
    return inputs, arguments


_CASES: dict[str, Callable] = {"attention": _attention_case, "cached": _cached_case}


def _shorten(message: str) -> str:
    message = " ".join(message.split())
    return message if len(message) <= MESSAGE_LIMIT else message[:MESSAGE_LIMIT - 3] + "..."
