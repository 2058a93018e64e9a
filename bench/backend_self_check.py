"""What `impl=None` checks and chooses on this machine, and how long each self-check takes.

    python3 bench/from_checkout.py bench/backend_self_check.py [--out self_check.json]

For each op and input dtype: the backend `impl=None` resolves to (the first time in the process,
so its self-check runs), the wall time of that resolution and any BackendSelfCheckWarning. Then
each preferred backend that can run here is checked directly with each dtype it takes (so a
backend passed over for the dtype, e.g. Triton for bf16 behind Mosaic GPU, is checked too), and
`impl=None` is resolved afresh inside `jax.jit` (the check must run eagerly from a trace). Ends
with `backend_report()`. Exit status 1 when a check failed or a resolution warned.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import jax
import jax.numpy as jnp

from genrank_jax.kernels import (
    BackendSelfCheckWarning,
    attention,
    backend_report,
    backends,
    default_cached_impl,
    default_impl,
    selection,
    self_check,
)

DTYPES = (jnp.bfloat16, jnp.float32)
RESOLVERS = {"attention": default_impl, "cached": default_cached_impl}


def resolve(op: str, dtype) -> dict:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        start = time.perf_counter()
        chosen = RESOLVERS[op](dtype)
        seconds = time.perf_counter() - start
    caught = [str(w.message) for w in record if issubclass(w.category, BackendSelfCheckWarning)]
    return dict(what="impl=None", op=op, dtype=jnp.dtype(dtype).name, chosen=chosen,
                seconds=round(seconds, 3), warnings=caught)


def check_directly(op: str, name: str, dtype) -> dict:
    backend = backends.lookup(op, name)
    row = dict(what="check", op=op, backend=name, dtype=jnp.dtype(dtype).name)
    reason = backend.unavailable_reason(interpret=False)
    if reason is not None or not backend.accepts(dtype):
        return {**row, "skipped": reason or "dtype not taken"}
    times = []
    for _ in range(2):  # the second run shows how much of the first was compilation
        start = time.perf_counter()
        failure = self_check.check(backend, dtype)
        times.append(round(time.perf_counter() - start, 3))
    return {**row, "failure": failure, "seconds": times}


def resolve_under_jit() -> dict:
    selection.forget()
    q = jnp.ones((2, 8, 2, 32), jnp.bfloat16)
    lengths = jnp.array([8, 3], jnp.int32)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        start = time.perf_counter()
        out = jax.jit(lambda q: attention(q, q, q, lengths=lengths))(q)
        seconds = time.perf_counter() - start
    return dict(what="impl=None under jit", shape=list(out.shape), seconds=round(seconds, 3),
                chosen=[s.chosen for s in backend_report().selections],
                warnings=[str(w.message) for w in record if issubclass(w.category, BackendSelfCheckWarning)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"jax {jax.__version__}, {device.platform} ({device.device_kind})", flush=True)
    rows = []
    for op in backends.OPS:
        for dtype in DTYPES:
            rows.append(resolve(op, dtype))
            print(json.dumps(rows[-1]), flush=True)
    report = str(backend_report())
    for op in backends.OPS:
        for name in backends.preferences(op, device.platform):
            for dtype in DTYPES:
                rows.append(check_directly(op, name, dtype))
                print(json.dumps(rows[-1]), flush=True)
    rows.append(resolve_under_jit())
    print(json.dumps(rows[-1]), flush=True)
    print(report, flush=True)
    if args.out:
        with open(args.out, "w") as file:
            json.dump(dict(device=device.device_kind, jax=jax.__version__, rows=rows, report=report), file, indent=1)
    bad = any(row.get("warnings") or row.get("failure") for row in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
