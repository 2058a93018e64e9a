"""Smoke test for a GPU machine: one jitted forward+backward call per attention backend and kind.

    python3 bench/from_checkout.py bench/device_smoke.py --out smoke.json
    python3 bench/from_checkout.py bench/device_smoke.py --dry-run --out smoke.json   (CPU, interpret)

Each row: the backend, kind, compile and run seconds, and the largest errors of the output and of
dq, dk, dv against the f32 jnp reference (`impl="xla"` at HIGHEST precision on the same bf16
inputs), relative to the reference's largest magnitude. A backend that cannot run here is a row
with its `unavailable` reason; a call that raises is a row with the error. The JSON file is
rewritten after every row, so a run killed at its time limit keeps what it measured. Exit status
1 when any call failed or missed the bf16 tolerance.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchlib import run_header, write_rows
from genrank_jax.kernels import alibi_slopes, attention, unavailable_reason

IMPLS = ("pallas_triton", "pallas_mosaic_gpu", "xla")
KINDS = ("softmax", "silu")
# bf16 inputs, f32 accumulation: errors relative to the reference's largest magnitude.
TOLERANCE = {"out": 2e-2, "dq": 4e-2, "dk": 4e-2, "dv": 4e-2}


def make_problem(batch, seq_len, heads, head_dim, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(batch, seq_len, heads, head_dim)), jnp.bfloat16)
               for _ in range(3))
    lengths = np.array([seq_len] + [int(rng.integers(1, seq_len))] * (batch - 1))[:batch]
    meta = dict(
        lengths=jnp.asarray(lengths, jnp.int32),
        num_candidates=jnp.asarray(np.minimum(lengths // 8, 128), jnp.int32),
        timestamps=jnp.asarray(-np.cumsum(rng.exponential(300.0, (batch, seq_len)), axis=1)[:, ::-1],
                               jnp.float32),
        alibi_slopes=alibi_slopes(heads), time_slopes=alibi_slopes(heads) * 0.5)
    cotangent = jnp.asarray(rng.normal(size=q.shape), jnp.bfloat16)
    return (q, k, v), meta, cotangent


def forward_backward(impl, kind, meta, interpret):
    def call(q, k, v, cotangent):
        out, vjp = jax.vjp(lambda q, k, v: attention(
            q, k, v, **meta, kind=kind, impl=impl, interpret=interpret and impl != "xla"), q, k, v)
        return (out, *vjp(cotangent))
    return jax.jit(call)


def reference(kind, meta, inputs, cotangent):
    upcast = [x.astype(jnp.float32) for x in (*inputs, cotangent)]
    with jax.default_matmul_precision("highest"):
        return [np.asarray(x, np.float32) for x in forward_backward("xla", kind, meta, False)(*upcast)]


def smoke_row(impl, kind, inputs, meta, cotangent, want, interpret):
    row = dict(impl=impl, kind=kind, dtype="bfloat16", interpret=interpret and impl != "xla")
    reason = unavailable_reason(impl, interpret=interpret)
    if reason is not None:
        return dict(row, unavailable=reason)
    try:
        start = time.perf_counter()
        compiled = forward_backward(impl, kind, meta, interpret).lower(*inputs, cotangent).compile()
        row["compile_s"] = time.perf_counter() - start
        start = time.perf_counter()
        got = jax.block_until_ready(compiled(*inputs, cotangent))
        row["run_s"] = time.perf_counter() - start
    except Exception as error:  # recorded in the row: the smoke test reports every backend
        return dict(row, error=f"{type(error).__name__}: {str(error)[:500]}")
    for name, g, w in zip(TOLERANCE, got, want):
        g = np.asarray(g, np.float32)
        row[f"{name}_max_error"] = float(np.abs(g - w).max()) / max(1.0, float(np.abs(w).max()))
        row[f"{name}_finite"] = bool(np.isfinite(g).all())
    row["ok"] = all(row[f"{n}_finite"] and row[f"{n}_max_error"] <= tol for n, tol in TOLERANCE.items())
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, interpret mode, tiny sizes")
    parser.add_argument("--out", default=None, help="JSON path ('auto': bench/results/)")
    args = parser.parse_args(argv)
    # GPU: S = 1024 with candidates, D = 128 (the benchmark's head dim); dry run: S = 40, D = 32.
    shape = (2, 40, 2, 32) if args.dry_run else (2, 1024, 4, 128)
    interpret = args.dry_run
    inputs, meta, cotangent = make_problem(*shape)
    header = dict(run_header(), batch=shape[0], seq_len=shape[1], heads=shape[2], head_dim=shape[3])
    print(header)
    rows, out = [], args.out
    for kind in KINDS:
        want = reference(kind, meta, inputs, cotangent)
        for impl in IMPLS:
            row = smoke_row(impl, kind, inputs, meta, cotangent, want, interpret)
            rows.append(row)
            out = write_rows("device_smoke", header, rows, out) or out  # "auto" names one file
            print({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    failed = [f"{r['impl']}/{r['kind']}" for r in rows if "error" in r or r.get("ok") is False]
    print(f"smoke: {len(rows)} calls, failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
