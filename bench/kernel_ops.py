"""Work per tile of the Hopper attention kernels next to jax's FA3-style kernel, without a GPU.

    python bench/kernel_ops.py [--seq-len 1024] [--head-dim 128] [--kind softmax|silu] [--out auto]

Lowers our `pallas_mosaic_gpu` kernels (forward, dq, dk/dv; softmax, or SiLU with `--kind silu`,
still next to jax's softmax kernel: jax has no SiLU one) and jax's own
`jax.experimental.pallas.ops.gpu.attention_mgpu` at the same tiles for CUDA on the CPU (an
abstract CUDA device: jax >= 0.11), reads the Mosaic GPU module each kernel lowers to, and counts
the operations in the steady-state key (or query) loop body: `arith` (arith-dialect ops on
vectors or floats and inline min/max/fma/abs; scalar integer ops are addressing and loop bookkeeping
that LLVM hoists, not per-element work), `special` (ex2, lg2, rcp, ... on the SFU), `wgmma`
instructions and WGMMA `wait`s (wait_group: the thread stalls until its issued WGMMAs finish;
fewer waits per step, more WGMMA overlap). Vector ops act on 2 f32 per line (vector<2xf32>),
inline-asm ones on 1, as the lowering emits them. Counts are per thread per loop step, so dividing
by the tile elements a thread owns gives ops per score element;
the ratio ours / jax's is printed per kernel, with biases off and on, for interior (history) tiles
and for diagonal tiles. jax's forward is its causal kernel (a mask-free loop for interior tiles,
a masked one on the diagonal); its backward has no causal mode, so its one loop is the baseline
for both tile kinds. f16 for both (jax's kernel allocates f16 shared memory).
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import types

import jax
import jax.numpy as jnp

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from benchlib import run_header, write_rows  # noqa: E402

THREADS = 128  # one warpgroup owns a WGMMA tile
_OP = re.compile(r'^\s*(?:%[^=]+=\s*)?"?([a-z_][a-z_0-9]*\.[a-z_.0-9]+)')
_ASM = re.compile(r'llvm\.inline_asm[^"]*"([^"]*)"')
_SPECIAL = ("ex2.", "lg2.", "rcp.", "sqrt.", "rsqrt.", "tanh.", "sin.", "cos.")
_ARITH_ASM = ("max.", "min.", "fma.", "abs.", "neg.")
_NOT_WORK = {"arith.constant", "arith.index_cast", "arith.index_castui", "arith.bitcast"}


def classify(line: str) -> str | None:
    """'arith', 'special', 'wgmma', 'wait' (a WGMMA wait_group: one per group of WGMMAs whose
    results the thread then reads) or None for one line of a lowered module."""
    asm = _ASM.search(line)
    if asm:
        text = asm.group(1).strip()
        if "wgmma.mma_async" in text:
            return "wgmma"
        if "wgmma.wait_group" in text:
            return "wait"
        if text.startswith(_SPECIAL):
            return "special"
        if text.startswith(_ARITH_ASM):
            return "arith"
        return None
    op = _OP.match(line)
    if not op:
        return None
    name = op.group(1)
    if name.startswith("math."):
        return "special"
    if name.startswith("arith.") and name not in _NOT_WORK:
        # scalar integer ops are addressing and loop bookkeeping (per-thread index math that
        # LLVM hoists out of the loop), not per-element work
        result_type = line.rsplit(":", 1)[-1]
        if "vector<" not in result_type and not re.search(r"\bf(16|32|64)\b|bf16", result_type):
            return None
        return "arith"
    return None


def _opener(line: str) -> str:
    """The op that opens a region on this line ('scf.for', 'scf.if', ...); a `case N {` or
    `default {` region of `scf.index_switch` (what `pl.when` lowers to) counts as 'scf.if'."""
    op = _OP.match(line)
    if op:
        return op.group(1)
    return "scf.if" if re.match(r"\s*(case -?\d+|default)\s*\{", line) else ""


def loop_bodies(text: str) -> list[collections.Counter]:
    """Op counts of every innermost `scf.for` body that issues WGMMAs, in program order.

    Ops nested in a conditional region inside the loop (`scf.if`, `scf.index_switch`: `pl.when`)
    are left out: they run on a few steps only (the one tile that crosses a sequence's length is
    cleaned of padding there), not in the steady state; `conditional` counts them.
    """
    lines = text.splitlines()
    stack: list[tuple[str, int]] = []  # (opening op, line number) of each open region
    per_line = []
    for number, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("}"):
            closed = stack.pop()
            if stripped.endswith("{"):  # `} else {` reopens the same op's next region
                stack.append(closed)
        elif stripped.endswith("{"):
            stack.append((_opener(line), number))
            continue
        per_line.append((number, tuple(stack)))
    bodies: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for number, stack_here in per_line:
        loops = [i for i, (op, _) in enumerate(stack_here) if op == "scf.for"]
        if not loops:
            continue
        innermost = loops[-1]
        start = stack_here[innermost][1]
        kind = classify(lines[number])
        if any(op == "scf.if" for op, _ in stack_here[innermost + 1:]):
            if kind in ("arith", "special"):
                bodies[start]["conditional"] += 1
            continue
        if kind:
            bodies[start][kind] += 1
        if "abs.f32" in lines[number]:
            bodies[start]["abs"] += 1
        if "arith.cmpi" in lines[number] and "vector<" in lines[number]:
            bodies[start]["masked"] += 1
    return [bodies[start] for start in sorted(bodies) if bodies[start]["wgmma"]]


class Capture:
    """Collects the text of every Mosaic GPU module lowered while active (in lowering order)."""

    def __enter__(self):
        from jax.experimental.mosaic.gpu import core
        self.core, self.original, self.modules = core, core._run_serde_pass, []

        def spy(module, *, serialize, ir_version=None):
            if serialize:
                self.modules.append(str(module))
            return self.original(module, serialize=serialize, ir_version=ir_version)
        core._run_serde_pass = spy
        return self

    def __exit__(self, *exc):
        self.core._run_serde_pass = self.original


def lower_for_cuda(function, *specs) -> list[str]:
    with Capture() as capture:
        jax.jit(function).trace(*specs).lower(lowering_platforms=("cuda",))
    return capture.modules


def ours(seq_len: int, head_dim: int, with_bias: bool,
         kind: str = "softmax") -> dict[str, dict[str, list[collections.Counter]]]:
    """{kernel: {path: loops}}: path '-' without biases (one tile math); with them 'ordered' and
    'general', the two tile maths each kernel carries (`kernels/ordering.py`)."""
    return {kernel: split_paths(loops, with_bias)
            for kernel, loops in _our_modules(seq_len, head_dim, with_bias, kind).items()}


def split_paths(loops: list[collections.Counter], with_bias: bool):
    """The loops of one kernel by path. With biases the kernel is `pl.when(ordered)` then
    `pl.when(not ordered)` around the same loop nest, so the first half of its loops (in program
    order) is the ordered path; checked: the general path's bias takes abs, the ordered one none."""
    if not with_bias:
        return {"-": loops}
    half = len(loops) // 2
    ordered, general = loops[:half], loops[half:]
    if (len(loops) % 2 or any(c["abs"] for c in ordered) or not all(c["abs"] for c in general)
            or [bool(c["masked"]) for c in ordered] != [bool(c["masked"]) for c in general]):
        raise RuntimeError("kernel loops do not split into an ordered and a general path: "
                           f"{[dict(c) for c in loops]}")
    return {"ordered": ordered, "general": general}


def _our_modules(seq_len: int, head_dim: int, with_bias: bool,
                 kind: str) -> dict[str, list[collections.Counter]]:
    from genrank_jax.kernels import alibi_slopes, pallas_mosaic_gpu
    sizes = pallas_mosaic_gpu.BlockSizes(block_q=64, block_kv=128, stages=2, compute_wgs=2,
                                         block_q_bwd=64, block_kv_bwd=64)
    slopes = alibi_slopes(1) if with_bias else None

    def loss(q, k, v, lengths, candidates, positions, times):
        out = pallas_mosaic_gpu.attention(
            q, k, v, lengths=lengths, num_candidates=candidates, positions=positions,
            timestamps=times, alibi_slopes=slopes, time_slopes=slopes, kind=kind,
            scale=head_dim ** -0.5, interpret=False, block_sizes=sizes)
        return out.astype(jnp.float32).sum()

    spec = jax.ShapeDtypeStruct
    tokens = spec((1, seq_len, 1, head_dim), jnp.float16)
    rows = spec((1, seq_len), jnp.int32)
    modules = lower_for_cuda(jax.grad(loss, argnums=(0, 1, 2)), tokens, tokens, tokens,
                             spec((1,), jnp.int32), spec((1,), jnp.int32), rows,
                             spec((1, seq_len), jnp.float32))
    return dict(zip(("forward", "dq", "dkv"), map(loop_bodies, modules)))


def jax_reference(seq_len: int, head_dim: int) -> dict[str, list[collections.Counter]]:
    from jax.experimental.pallas.ops.gpu import attention_mgpu
    # The kernel asks the CUDA runtime for its version (a ptxas bug workaround); none here.
    attention_mgpu.cuda_versions = types.SimpleNamespace(cuda_runtime_get_version=lambda: 12091)
    tokens = jax.ShapeDtypeStruct((1, seq_len, 1, head_dim), jnp.float16)
    causal = attention_mgpu.TuningConfig(block_q=64, block_kv=128, max_concurrent_steps=2,
                                         causal=True)
    forward = lower_for_cuda(lambda q, k, v: attention_mgpu.attention(q, k, v, causal), *[tokens] * 3)
    full = attention_mgpu.TuningConfig(
        block_q=64, block_kv=128, max_concurrent_steps=2, compute_wgs_bwd=2,
        block_q_dkv=64, block_kv_dkv=64, block_q_dq=64, block_kv_dq=64)
    grad = jax.grad(lambda q, k, v: attention_mgpu.attention(q, k, v, full).astype(jnp.float32).sum(),
                    argnums=(0, 1, 2))
    modules = lower_for_cuda(grad, *[tokens] * 3)
    return dict(forward=loop_bodies(forward[0]), dq=loop_bodies(modules[1]),
                dkv=loop_bodies(modules[2]))


TILE_ELEMENTS = {"forward": 64 * 128 // THREADS, "dq": 64 * 64 // THREADS, "dkv": 64 * 64 // THREADS}


def by_tile(loops: list[collections.Counter]) -> dict[str, collections.Counter]:
    """{'interior': body, 'diagonal': body}: the first loop without vector compares (no mask) and
    the first with them; a kernel with one kind of loop uses it for both."""
    plain = [c for c in loops if not c["masked"]]
    masked = [c for c in loops if c["masked"]]
    if not loops:
        raise RuntimeError("no WGMMA loop found")
    return {"interior": (plain or masked)[0], "diagonal": (masked or plain)[0]}


# What the ordered path's bias must add per score element, in this count's units (a vector op
# acts on 2 f32, so 0.5 per element; an inline-asm one, lg2, on 1): ALiBi, the per-key add 0.5;
# time, (t_i + 1) - t_j 0.5, lg2 1.0, times the slope 0.5, into the logit 0.5. Nothing of it can go:
# the time term is a function of both i and j (one subtraction, one lg2 and one multiply-add each,
# the multiply-add counted as its mul + add, as jax's own are); the per-key ALiBi add could only
# move into the q.k matmul (an extra K column, free only where D is padded anyway). Below this:
# an approximation of lg2, or a bias materialised in memory (O(S^2), what the op exists to avoid).
BIAS_FLOOR_PER_ELEMENT = 0.5 + (0.5 + 1.0 + 0.5 + 0.5)
# SiLU has no per-row invariance: the ALiBi term is a per-key and a per-query add (0.5 more).
BIAS_FLOOR = {"softmax": BIAS_FLOOR_PER_ELEMENT, "silu": BIAS_FLOOR_PER_ELEMENT + 0.5}


def _row(kernel, with_bias, path, tile, counts, base):
    per = TILE_ELEMENTS[kernel]
    row = dict(kernel=kernel, biases="on" if with_bias else "off", path=path, tile=tile)
    for kind in ("arith", "special", "wgmma", "wait"):
        row[f"ours_{kind}"], row[f"jax_{kind}"] = counts[kind], base[kind]
    work, base_work = counts["arith"] + counts["special"], base["arith"] + base["special"]
    row.update(ours_per_element=work / per, jax_per_element=base_work / per, ratio=work / base_work)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--kind", choices=("softmax", "silu"), default="softmax",
                        help="our kernels' kind; jax's kernel (the baseline) is softmax either way")
    parser.add_argument("--out", default=None, help="'auto' writes bench/results/kernel_ops_*.json")
    args = parser.parse_args(argv)
    if jax.__version_info__ < (0, 11):
        print(f"kernel_ops: jax {jax.__version__} cannot lower for CUDA without a GPU; needs >= 0.11",
              file=sys.stderr)
        return 2
    baseline = {kernel: by_tile(loops) for kernel, loops in
                jax_reference(args.seq_len, args.head_dim).items()}
    rows = []
    for with_bias in (False, True):
        for kernel, paths in ours(args.seq_len, args.head_dim, with_bias, args.kind).items():
            for path, loops in paths.items():
                for tile, counts in by_tile(loops).items():
                    rows.append(_row(kernel, with_bias, path, tile, counts, baseline[kernel][tile]))
    no_bias = {(r["kernel"], r["tile"]): r["ours_per_element"] for r in rows if r["biases"] == "off"}
    for row in rows:
        if row["path"] == "ordered":
            # the exact contract's floor: the no-bias loop plus what the ordered bias must add
            floor = no_bias[row["kernel"], row["tile"]] + BIAS_FLOOR[args.kind]
            row.update(floor_per_element=floor, floor_ratio=floor / row["jax_per_element"])
    header = run_header() | dict(seq_len=args.seq_len, head_dim=args.head_dim, kind=args.kind,
                                 tiles="forward 64x128, dq 64x64, dk/dv 64x64 (per warpgroup)")
    print(f"# kernel_ops: jax {jax.__version__}, S={args.seq_len}, D={args.head_dim}, f16, ours "
          f"{args.kind} (jax's: softmax); "
          "ops per thread per loop step (arith + special) / score elements per thread")
    print(f"{'kernel':8} {'biases':6} {'path':8} {'tile':9} {'ours/elt':>9} {'jax/elt':>8} "
          f"{'ratio':>6} {'floor':>6}   {'arith':>11} {'special':>9} {'wgmma':>7} {'waits':>5}  (ours/jax)")
    for row in rows:
        floor = f"{row['floor_ratio']:6.2f}" if "floor_ratio" in row else f"{'':6}"
        print(f"{row['kernel']:8} {row['biases']:6} {row['path']:8} {row['tile']:9} "
              f"{row['ours_per_element']:9.2f} {row['jax_per_element']:8.2f} {row['ratio']:6.2f} {floor}   "
              f"{row['ours_arith']:>5}/{row['jax_arith']:<5} {row['ours_special']:>4}/{row['jax_special']:<4} "
              f"{row['ours_wgmma']:>3}/{row['jax_wgmma']:<3} {row['ours_wait']:>2}/{row['jax_wait']:<2}")
    print(f"floor: the exact contract's least work with both biases on the ordered path, = the "
          f"no-bias loop + {BIAS_FLOOR[args.kind]} ops per element (ALiBi: one per-key add"
          f"{', one per-query add' if args.kind == 'silu' else ''}; time: "
          "(t_i + 1) - t_j, lg2, times the slope, into the logit); the general path adds abs and "
          "the per-pair ALiBi (see BIAS_FLOOR_PER_ELEMENT)")
    path = write_rows("kernel_ops", header, rows, args.out)
    if path:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
