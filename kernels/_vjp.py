"""The custom_vjp shared by the Pallas attention backends, and the GPU backends' padding.

`make_op` is used by all three backends. A backend supplies `forward(static, q, k, v, meta) -> (out, lse2)` and
`backward(static, q, k, v, meta, out, lse2, dout) -> (dq, dk, dv)` on padded arrays; `padded_call`
pads the public [B, S, H, D] inputs (sequence to the tile multiple, head dims to what the kernels
need), runs them through one `jax.custom_vjp` and slices the result back. Padding sits outside the
custom_vjp, so its own gradient (a slice) comes from autodiff. Padded tokens are beyond every
sample's length and are masked like any other invalid pair. (The TPU backend pads to its own
head-major layout and uses `make_op` only.)

`padded_call` also prepares the GPU kernels' ordered path (`ordering`): positions shifted per
sample (the bias depends on differences only), and, with a bias, a per-sample flag
[B] int32 that picks the kernels' ordered tile math at run time, t + 1 [B, S] and (ALiBi) the
per-key term [B, H, S] that this math reads.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from genrank_jax.kernels import ordering


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def next_power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def is_power_of_two(n) -> bool:
    return isinstance(n, int) and n >= 1 and n & (n - 1) == 0


def check_tile_sizes(sizes, names) -> None:
    """Raise if any of `sizes`' fields `names` is not a power of two >= 16 (a tile edge)."""
    for name in names:
        value = getattr(sizes, name)
        if not is_power_of_two(value) or value < 16:
            raise ValueError(f"{name}={value!r} must be a power of two >= 16")


def make_op(forward, backward):
    """The differentiable op `op(static, q, k, v, meta) -> out` (meta gets no cotangent)."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
    def op(static, q, k, v, meta):
        return forward(static, q, k, v, meta)[0]

    def op_fwd(static, q, k, v, meta):
        out, lse2 = forward(static, q, k, v, meta)
        return out, (q, k, v, meta, out, lse2)

    def op_bwd(static, residuals, dout):
        q, k, v, meta, out, lse2 = residuals
        dq, dk, dv = backward(static, q, k, v, meta, out, lse2, dout)
        no_cotangent = jax.tree.map(lambda _: None, meta)
        return dq, dk, dv, no_cotangent

    op.defvjp(op_fwd, op_bwd)
    return op


def _pad_axis(x, axis: int, size: int):
    if x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths)


def padded_call(op, static, q, k, v, *, lengths, num_candidates, positions, timestamps,
                alibi_slopes, time_slopes, seq_multiple: int, head_dim: int, value_dim: int):
    """Pad to (S', head_dim, value_dim), run `op`, return [B, S, H, Dv] in v's dtype."""
    seq_len, original_value_dim = q.shape[1], v.shape[-1]
    padded_len = round_up(seq_len, seq_multiple)
    q, k = (_pad_axis(_pad_axis(x, 1, padded_len), 3, head_dim) for x in (q, k))
    v = _pad_axis(_pad_axis(v, 1, padded_len), 3, value_dim)
    ordered = times_plus_one = key_bias = None
    if alibi_slopes is not None:
        positions = ordering.shifted_positions(lengths, positions)  # |p_i - p_j| unchanged
    if static.ordered_path:
        ordered = ordering.ordered_samples(
            lengths, num_candidates, positions if alibi_slopes is not None else None,
            timestamps if time_slopes is not None else None, alibi_slopes=alibi_slopes,
            key_bias_limit=ordering.key_bias_limit(q.dtype, static.kind)).astype(jnp.int32)
        times_plus_one = _pad_axis(timestamps + 1.0, 1, padded_len)
        if alibi_slopes is not None:
            key_bias = ordering.key_bias(_pad_axis(positions, 1, padded_len), alibi_slopes,
                                         base2=static.kind == "softmax")
    meta = (lengths, num_candidates, _pad_axis(positions, 1, padded_len),
            _pad_axis(timestamps, 1, padded_len), alibi_slopes, time_slopes, ordered,
            times_plus_one, key_bias)
    out = op(static, q, k, v, meta)
    return out[:, :seq_len, :, :original_value_dim]
