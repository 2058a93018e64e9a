"""The cached attention op (serving) against the full op's candidate rows, forward and backward.

The independent oracle is the full op (`attention`, its jnp reference) on the concatenated sequence
history + candidates: the cached op must return exactly its candidate rows, and (reference backend)
the gradients of q, k, v, cached keys and cached values must be the full op's gradients at the
corresponding rows. The Pallas backend runs in interpret mode on the CPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genrank_jax.kernels import alibi_slopes, attention, cached_attention
from genrank_jax.kernels.pallas_cached import BlockSizes

ATOL = 1e-5


def make_case(seed, *, batch=3, cache_len=37, slots=21, heads=2, head_dim=16, value_dim=None,
              cache_lengths=None, num_candidates=None):
    """Random cached-op inputs and the equivalent full-op sequence (history then candidates)."""
    rng = np.random.default_rng(seed)
    value_dim = value_dim or head_dim
    normal = lambda *shape: rng.normal(size=shape).astype(np.float32)
    q, k, v = (normal(batch, slots, heads, head_dim), normal(batch, slots, heads, head_dim),
               normal(batch, slots, heads, value_dim))
    cache_k, cache_v = normal(batch, cache_len, heads, head_dim), normal(batch, cache_len, heads, value_dim)
    lengths = np.array(cache_lengths if cache_lengths is not None else rng.integers(0, cache_len + 1, batch))
    counts = np.array(num_candidates if num_candidates is not None else rng.integers(0, slots + 1, batch))
    cache_positions = np.cumsum(rng.integers(0, 3, (batch, cache_len)), axis=1).astype(np.int32)
    positions = (cache_positions[np.arange(batch), np.maximum(lengths - 1, 0)][:, None]
                 + rng.integers(0, 3, (batch, slots))).astype(np.int32)
    cache_times = -np.cumsum(rng.exponential(300.0, (batch, cache_len))[:, ::-1], axis=1)[:, ::-1]
    times = rng.uniform(-50, 0, (batch, slots))
    slopes = dict(alibi_slopes=alibi_slopes(heads) * rng.uniform(0.5, 2.0),
                  time_slopes=alibi_slopes(heads) * rng.uniform(0.5, 2.0))
    cached = dict(cache_lengths=jnp.asarray(lengths, jnp.int32), num_candidates=jnp.asarray(counts, jnp.int32),
                  positions=jnp.asarray(positions), cache_positions=jnp.asarray(cache_positions),
                  timestamps=jnp.asarray(times, jnp.float32), cache_timestamps=jnp.asarray(cache_times, jnp.float32),
                  **slopes)
    # the full sequence: sample b's history rows [0, h), candidate rows [h, h + m), padding after
    seq_len = cache_len + slots
    history_rows = [np.arange(h) for h in lengths]
    candidate_rows = [h + np.arange(slots) for h in lengths]  # slot j -> row h + j (even past m: masked)
    layout = dict(history_rows=history_rows, candidate_rows=candidate_rows, seq_len=seq_len)
    full_meta = np.zeros((batch, seq_len), np.int32), np.zeros((batch, seq_len), np.float32)
    full_pos, full_time = full_meta
    for b in range(batch):
        full_pos[b, history_rows[b]] = cache_positions[b, :lengths[b]]
        full_pos[b, candidate_rows[b]] = positions[b]
        full_time[b, history_rows[b]] = cache_times[b, :lengths[b]]
        full_time[b, candidate_rows[b]] = times[b]
    full = dict(lengths=jnp.asarray(lengths + counts, jnp.int32), num_candidates=jnp.asarray(counts, jnp.int32),
                positions=jnp.asarray(full_pos), timestamps=jnp.asarray(full_time), **slopes)
    arrays = tuple(jnp.asarray(x) for x in (q, k, v, cache_k, cache_v))
    return arrays, cached, full, layout


def assemble(layout, cands, cache):
    """[B, S, ...]: cache rows then candidate rows, per sample (zeros after), by two gathers."""
    batch, seq_len = cands.shape[0], layout["seq_len"]
    from_cache, cache_row = np.zeros((batch, seq_len), bool), np.zeros((batch, seq_len), np.int32)
    from_cands, cand_slot = np.zeros((batch, seq_len), bool), np.zeros((batch, seq_len), np.int32)
    for b in range(batch):
        h = len(layout["history_rows"][b])
        from_cache[b, :h], cache_row[b, :h] = True, np.arange(h)
        rows = layout["candidate_rows"][b]
        from_cands[b, rows], cand_slot[b, rows] = True, np.arange(len(rows))
    expand = lambda x: x.reshape(x.shape + (1,) * (cands.ndim - 2))
    gather = lambda x, index: jnp.take_along_axis(x, jnp.asarray(expand(index)), axis=1)
    out = jnp.where(expand(from_cache), gather(cache, cache_row), 0.0)
    return jnp.where(expand(from_cands), gather(cands, cand_slot), out).astype(cands.dtype)


def full_candidate_rows(arrays, full, layout, kind):
    """Full-op output at the candidate rows, as a function of (q, k, v, cache_k, cache_v)."""
    q, k, v, cache_k, cache_v = arrays
    out = attention(assemble(layout, q, jnp.zeros_like(cache_k)), assemble(layout, k, cache_k),
                    assemble(layout, v, cache_v), **full, kind=kind, impl="xla")
    return jnp.stack([out[b, rows] for b, rows in enumerate(layout["candidate_rows"])])


def zero_padding_rows(x, counts):
    return x * (np.arange(x.shape[1])[None, :] < np.asarray(counts)[:, None])[:, :, None, None]


@pytest.mark.parametrize("kind", ["softmax", "silu"])
@pytest.mark.parametrize("seed", [0, 1])
def test_reference_equals_full_op_candidate_rows_forward_and_backward(kind, seed):
    arrays, cached, full, layout = make_case(seed, cache_lengths=[0, 1, 30] if seed else None)
    counts = cached["num_candidates"]

    def cached_fn(*xs):
        q, k, v, cache_k, cache_v = xs
        return cached_attention(q, k, v, cache_keys=cache_k, cache_values=cache_v, **cached, kind=kind, impl="xla")

    def full_fn(*xs):  # rows past num_candidates are zero in the cached op, masked in the full op
        return zero_padding_rows(full_candidate_rows(xs, full, layout, kind), counts)

    # jitted: one XLA program each is much faster than op-by-op on a loaded 2-core machine
    got, got_vjp = jax.vjp(jax.jit(cached_fn), *arrays)
    want, want_vjp = jax.vjp(jax.jit(full_fn), *arrays)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=ATOL / 10)
    cotangent = jnp.asarray(np.random.default_rng(seed + 7).normal(size=got.shape), jnp.float32)
    for name, g, w in zip(("dq", "dk", "dv", "dcache_k", "dcache_v"), got_vjp(cotangent), want_vjp(cotangent)):
        np.testing.assert_allclose(g, w, atol=2 * ATOL, rtol=2 * ATOL / 10, err_msg=name)
    assert np.abs(np.asarray(got)).max() > 0.1  # a real signal, not all zeros


@pytest.mark.parametrize("kind", ["softmax", "silu"])
@pytest.mark.parametrize("seed,shape", [(3, dict(batch=2, cache_len=50, slots=35, head_dim=24, value_dim=8)),
                                        (4, dict(cache_len=5, slots=3, batch=2))])
def test_pallas_interpret_equals_reference(kind, seed, shape):
    arrays, cached, full, layout = make_case(seed, **shape)
    q, k, v, cache_k, cache_v = arrays
    call = lambda impl: jax.jit(lambda q, k, v, cache_k, cache_v: cached_attention(
        q, k, v, cache_keys=cache_k, cache_values=cache_v, **cached, kind=kind, impl=impl, interpret=True,
        block_sizes=BlockSizes(block_m=16, block_n=16) if impl != "xla" else None))(q, k, v, cache_k, cache_v)
    got, want = call("pallas_triton"), call("xla")
    np.testing.assert_allclose(got, want, atol=ATOL * max(1.0, np.abs(want).max()), rtol=ATOL / 10)
    # and against the independent oracle, the full op
    full_rows = jax.jit(lambda *xs: full_candidate_rows(xs, full, layout, kind))(*arrays)
    np.testing.assert_allclose(got, zero_padding_rows(full_rows, cached["num_candidates"]), atol=ATOL, rtol=ATOL / 10)


def test_pallas_backend_refuses_gradients():
    arrays, cached, _, _ = make_case(5)
    q, k, v, cache_k, cache_v = arrays
    loss = lambda q: cached_attention(q, k, v, cache_keys=cache_k, cache_values=cache_v, **cached,
                                      impl="pallas_triton", interpret=True).sum()
    with pytest.raises(NotImplementedError, match="inference only"):
        jax.grad(loss)(q)


def test_bad_arguments_raise():
    arrays, cached, _, _ = make_case(6)
    q, k, v, cache_k, cache_v = arrays
    with pytest.raises(ValueError, match="cache_keys"):
        cached_attention(q, k, v, cache_keys=cache_k[:, :, :1], cache_values=cache_v,
                         cache_lengths=cached["cache_lengths"])
    with pytest.raises(NotImplementedError, match="no backend 'pallas_tpu'"):
        cached_attention(q, k, v, cache_keys=cache_k, cache_values=cache_v, cache_lengths=cached["cache_lengths"],
                         impl="pallas_tpu")
    # the CPU refusal of a compiled GPU kernel; on a GPU the call compiles (the device tests cover it)
    if jax.devices()[0].platform == "cpu":
        with pytest.raises(NotImplementedError, match="interpret=True"):
            cached_attention(q, k, v, cache_keys=cache_k, cache_values=cache_v,
                             cache_lengths=cached["cache_lengths"], impl="pallas_triton")
    else:
        out = cached_attention(q, k, v, cache_keys=cache_k, cache_values=cache_v,
                               cache_lengths=cached["cache_lengths"], impl="pallas_triton")
        assert out.shape == q.shape[:-1] + (v.shape[-1],)


@pytest.mark.parametrize("kind", ["softmax", "silu"])
def test_pallas_kernel_lowers_to_triton_for_cuda(kind):
    """The real (non-interpret) kernel lowers for CUDA without a GPU: one Triton custom call."""
    import re

    from genrank_jax.kernels import pallas_cached
    from tests.kernels.test_pallas_gpu import _cuda_target  # the abstract GPU jax >= 0.11 lowers for
    batch, slots, cache_len, heads, head_dim = 2, 100, 300, 2, 64
    spec = jax.ShapeDtypeStruct
    tokens, cache = (spec((batch, slots, heads, head_dim), jnp.bfloat16),
                     spec((batch, cache_len, heads, head_dim), jnp.bfloat16))
    ints = spec((batch,), jnp.int32)
    slopes = alibi_slopes(heads)

    def forward(q, k, v, cache_k, cache_v, lengths, counts, positions, cache_positions, times, cache_times):
        return pallas_cached.cached_attention(
            q, k, v, cache_keys=cache_k, cache_values=cache_v, cache_lengths=lengths, num_candidates=counts,
            positions=positions, cache_positions=cache_positions, timestamps=times, cache_timestamps=cache_times,
            alibi_slopes=slopes, time_slopes=slopes, kind=kind, scale=head_dim ** -0.5, normalizer=lengths + counts,
            interpret=False, block_sizes=BlockSizes())

    with _cuda_target():
        text = jax.jit(forward).trace(
            tokens, tokens, tokens, cache, cache, ints, ints, spec((batch, slots), jnp.int32),
            spec((batch, cache_len), jnp.int32), spec((batch, slots), jnp.float32),
            spec((batch, cache_len), jnp.float32)).lower(lowering_platforms=("cuda",)).as_text()
    calls = re.findall(r"custom_call @([^(]+)\(", text)
    assert len(calls) == 1 and "triton" in calls[0], calls


@pytest.mark.parametrize("impl", ["xla", "pallas_triton"])
@pytest.mark.parametrize("kind", ["softmax", "silu"])
def test_nan_padding_never_reaches_a_valid_output(impl, kind):
    """NaN / Inf in cache rows past cache_lengths and in candidate slots past num_candidates
    change nothing: valid rows are bit-for-bit those of clean padding, padding rows are 0 (a zero
    weight times the cache's NaN used to make every candidate of the user NaN)."""
    arrays, cached, _, _ = make_case(8, batch=3, cache_len=20, slots=18, cache_lengths=[0, 7, 17],
                                     num_candidates=[18, 5, 1])
    lengths, counts = np.asarray(cached["cache_lengths"]), np.asarray(cached["num_candidates"])

    def call(arrays, cache_times, times):
        q, k, v, cache_k, cache_v = arrays
        arguments = dict(cached, cache_timestamps=jnp.asarray(cache_times), timestamps=jnp.asarray(times))
        return np.asarray(cached_attention(q, k, v, cache_keys=cache_k, cache_values=cache_v, **arguments,
                                           kind=kind, impl=impl, interpret=impl != "xla"))

    clean = call(arrays, cached["cache_timestamps"], cached["timestamps"])
    q, k, v, cache_k, cache_v = (np.array(x) for x in arrays)
    cache_times, times = np.array(cached["cache_timestamps"]), np.array(cached["timestamps"])
    for b in range(3):
        cache_k[b, lengths[b]:], cache_v[b, lengths[b]:], cache_times[b, lengths[b]:] = np.inf, np.nan, np.nan
        q[b, counts[b]:], k[b, counts[b]:], v[b, counts[b]:], times[b, counts[b]:] = np.nan, -np.inf, np.nan, np.nan
    poisoned = call(tuple(jnp.asarray(x) for x in (q, k, v, cache_k, cache_v)), cache_times, times)
    assert np.isfinite(poisoned).all(), f"{impl}: NaN/Inf escaped the padding"
    np.testing.assert_array_equal(poisoned, clean)
    for b in range(3):
        assert not poisoned[b, counts[b]:].any(), f"{impl}: nonzero past num_candidates"
    assert np.abs(clean).max() > 0.1


@pytest.mark.parametrize("kind", ["softmax", "silu"])
def test_pallas_nan_at_a_valid_token_propagates_as_in_the_reference(kind):
    """NaN in a valid candidate's q or a valid cache key reaches the outputs it reaches in the
    reference (the kernel used to zero a row whose softmax sum was NaN: `l > 0`)."""
    arrays, cached, _, _ = make_case(9, batch=2, cache_len=20, slots=17, cache_lengths=[12, 19],
                                     num_candidates=[17, 6])
    q, k, v, cache_k, cache_v = (np.array(x) for x in arrays)
    q[0, 4, 1, 2] = np.nan  # one candidate, one head
    cache_k[1, 3, 0, 5] = np.inf  # every candidate of sample 1, head 0
    inputs = tuple(jnp.asarray(x) for x in (q, k, v, cache_k, cache_v))
    call = lambda impl: np.asarray(cached_attention(
        *inputs[:3], cache_keys=inputs[3], cache_values=inputs[4], **cached, kind=kind, impl=impl,
        interpret=impl != "xla"))
    want, got = call("xla"), call("pallas_triton")
    assert np.isnan(want).any()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=ATOL / 10)
