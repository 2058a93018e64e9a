"""The GPU kernels' ordered path (kernels/ordering.py, `_gpu_tiles.ordered_logits`).

Samples whose attended pairs are ordered in position and time (and whose t + 1 is exact in f32)
run a cheaper bias (softmax and SiLU); the rest the general one. Checked here: the flag against a brute-force
statement of its condition, parity of both paths in interpret mode (the blocked kernels run the
same tile math as the Hopper ones, so the ordered arithmetic is executed on the CPU), that the
flag really switches the arithmetic (forcing it on unordered inputs breaks the result), and that
it works on traced inputs under `jit`.
"""

from __future__ import annotations

import fractions
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genrank_jax.kernels import attention, ordering
from tests.kernels.oracle import attends
from tests.kernels.parity import Case, check_parity, make_inputs, run

IMPLS = ("pallas_triton", "pallas_mosaic_gpu")


# ---------------------------------------------------------------- the flag

def test_adds_one_exactly_matches_float64():
    rng = np.random.default_rng(0)
    edges = [-5.0, -1.0, -(2.0 ** 24), -12345.678, 3.0, 0.3, 0.5, -1e-10, -0.75,
             -(2.0 ** 25) + 2, 2.0 ** 24, -1e30, np.nan, np.inf, -np.inf]
    values = np.concatenate([np.array(edges), rng.normal(0, 1e4, 500), rng.normal(0, 3, 500),
                             -rng.integers(0, 2 ** 26, 500).astype(np.float64)]).astype(np.float32)
    got = np.asarray(ordering.adds_one_exactly(jnp.asarray(values)))
    np.testing.assert_array_equal(got, [_adds_one_exactly(t) for t in values])
    assert got[:3].all() and not got[5] and not got[7] and not got[9]  # -5, -1, -2^24; 0.3, -1e-10, odd


def _adds_one_exactly(t) -> bool:
    """In exact rational arithmetic: is the f32 sum t + 1 equal to t + 1?"""
    with np.errstate(invalid="ignore", over="ignore"):
        total = np.float32(t) + np.float32(1)
    if not np.isfinite(total):
        return False
    return fractions.Fraction(float(total)) - fractions.Fraction(float(t)) == 1


def _ordered_by_brute_force(lengths, candidates, positions, times):
    flags = []
    for b in range(len(lengths)):
        length, count = int(lengths[b]), int(candidates[b])
        ok = all(_adds_one_exactly(times[b, i]) for i in range(length))
        for i, j in itertools.product(range(length), repeat=2):
            if attends(i, j, length, count):
                ok &= bool(positions[b, j] <= positions[b, i]) and bool(times[b, j] <= times[b, i])
        flags.append(ok)
    return np.array(flags)


def test_ordered_samples_match_brute_force():
    """Random small samples, mostly ordered with ties, some with one pair out of order, some
    shuffled, some with a t + 1 that is not exact or NaN; padding holds garbage (ignored)."""
    rng = np.random.default_rng(1)
    batch, seq_len = 300, 9
    lengths = rng.integers(0, seq_len + 1, batch)
    candidates = rng.integers(0, lengths + 1)
    case = Case(batch=batch, seq_len=seq_len, order="ties", lengths=tuple(lengths),
                num_candidates=tuple(candidates), seed=2)
    _, _, _, arguments, _ = make_inputs(case)
    positions = np.array(arguments["positions"])
    times = np.array(arguments["timestamps"])
    for b in range(batch):
        kind = b % 6
        length = lengths[b]
        if kind == 1 and length > 1:  # one token moved back in position or time
            i = rng.integers(1, length)
            (positions if rng.random() < 0.5 else times)[b, i] -= 5
        elif kind == 2:
            positions[b], times[b] = rng.permuted(positions[b]), rng.permuted(times[b])
        elif kind == 3 and length:
            times[b, rng.integers(0, length)] = rng.choice([0.3, np.nan, -(2.0 ** 25) + 2])
        times[b, length:] = rng.choice([np.nan, np.inf, -1e9])  # padding: never read
        positions[b, length:] = rng.integers(-10 ** 6, 10 ** 6)
    got = np.asarray(ordering.ordered_samples(
        jnp.asarray(lengths, jnp.int32), jnp.asarray(candidates, jnp.int32),
        jnp.asarray(positions), jnp.asarray(times, jnp.float32)))
    want = _ordered_by_brute_force(lengths, candidates, positions, times.astype(np.float32))
    np.testing.assert_array_equal(got, want)
    assert 0.2 < want.mean() < 0.9  # both kinds of sample are exercised


def test_each_term_alone_sets_its_own_condition():
    lengths, candidates = jnp.array([4, 4], jnp.int32), jnp.array([1, 1], jnp.int32)
    positions = jnp.array([[0, 1, 2, 3], [3, 2, 1, 0]], jnp.int32)
    times = jnp.array([[-9.0, -5.0, -5.0, 0.0], [-9.0, -5.0, -5.0, 0.0]], jnp.float32)
    both = ordering.ordered_samples(lengths, candidates, positions, times)
    np.testing.assert_array_equal(both, [True, False])
    np.testing.assert_array_equal(ordering.ordered_samples(lengths, candidates, None, times),
                                  [True, True])
    np.testing.assert_array_equal(ordering.ordered_samples(lengths, candidates, positions, None),
                                  [True, False])


def test_a_long_position_span_takes_the_general_path():
    """The per-key ALiBi term grows with the span; past the dtype's limit its f32 rounding would
    show, so such samples take the general path (tighter for f32 inputs than for bf16)."""
    lengths, candidates = jnp.array([3, 3, 2], jnp.int32), jnp.array([0, 0, 0], jnp.int32)
    positions = jnp.array([[0, 10, 40], [0, 10, 4000], [0, 10, 10 ** 9]], jnp.int32)  # 3rd: pad
    slopes = jnp.array([0.25, 1.0], jnp.float32)  # the largest counts: 1.44 per position
    flags = lambda dtype: np.asarray(ordering.ordered_samples(
        lengths, candidates, positions, None, alibi_slopes=slopes,
        key_bias_limit=ordering.key_bias_limit(dtype)))
    np.testing.assert_array_equal(flags(jnp.float32), [True, False, True])  # 57.7 <= 64
    np.testing.assert_array_equal(flags(jnp.bfloat16), [True, True, True])  # 5771 <= 8192


def test_shifted_positions_keep_differences():
    positions = jnp.array([[5, 9, 7, 1000], [-3, -3, 2, 4]], jnp.int32)
    shifted = np.asarray(ordering.shifted_positions(jnp.array([3, 0], jnp.int32), positions))
    np.testing.assert_array_equal(shifted[0, :3], [-4, 0, -2])  # largest valid (9) -> 0
    np.testing.assert_array_equal(shifted[1], [-3, -3, 2, 4])  # no valid token: unchanged


# ---------------------------------------------------------------- the kernels on both paths

def _flags(case):
    _, _, _, arguments, _ = make_inputs(case)
    return np.asarray(ordering.ordered_samples(
        arguments["lengths"], arguments["num_candidates"], arguments["positions"],
        arguments["timestamps"], alibi_slopes=arguments.get("alibi_slopes"),
        key_bias_limit=ordering.key_bias_limit(case.dtype, case.kind)))


ORDERED = Case(batch=3, seq_len=40, heads=2, order="ties", lengths=(40, 33, 17),
               num_candidates=(5, 0, 17), seed=21)
# (all candidates and no history would be ordered: each then sees only itself)
UNORDERED = Case(batch=3, seq_len=40, heads=2, order="shuffled", lengths=(40, 33, 17),
                 num_candidates=(5, 0, 3), seed=22)


@pytest.mark.parametrize("impl, dtype, kind", [("pallas_triton", jnp.float32, "softmax"),
                                               ("pallas_mosaic_gpu", jnp.float32, "softmax"),
                                               ("pallas_mosaic_gpu", jnp.bfloat16, "softmax"),
                                               ("pallas_triton", jnp.float32, "silu"),
                                               ("pallas_mosaic_gpu", jnp.bfloat16, "silu")])
def test_ordered_inputs_take_the_ordered_path_and_match(impl, dtype, kind):
    case = Case(**{**ORDERED.__dict__, "dtype": dtype, "kind": kind})
    assert _flags(case).all()
    check_parity(impl, case, interpret=True)


@pytest.mark.parametrize("impl, kind", [("pallas_triton", "softmax"),
                                        ("pallas_mosaic_gpu", "softmax"),
                                        ("pallas_mosaic_gpu", "silu")])
def test_unordered_inputs_take_the_general_path_and_match(impl, kind):
    case = Case(**{**UNORDERED.__dict__, "kind": kind})
    assert not _flags(case).any()
    check_parity(impl, case, interpret=True)


def test_one_bias_term_alone_on_the_ordered_path():
    impl = "pallas_mosaic_gpu"  # (the Triton backend runs the same blocked kernels)
    for case in (Case(batch=2, seq_len=24, order="ties", with_time_bias=False, seed=23),
                 Case(batch=2, seq_len=24, order="ties", with_alibi=False, seed=24)):
        assert _flags(case).all()
        check_parity(impl, case, interpret=True)


@pytest.mark.parametrize("kind", ["softmax", "silu"])
def test_the_flag_switches_the_arithmetic(monkeypatch, kind):
    """The ordered math really runs: forced onto unordered inputs it gives a wrong answer (it
    has no abs), and forced off on ordered inputs the general math still gives the right one."""
    impl = "pallas_mosaic_gpu"
    unordered = Case(**{**UNORDERED.__dict__, "kind": kind})
    ordered = Case(**{**ORDERED.__dict__, "kind": kind})
    want, _ = run("xla", unordered, interpret=False)
    always = lambda lengths, *_, **__: jnp.ones(lengths.shape, bool)
    never = lambda lengths, *_, **__: jnp.zeros(lengths.shape, bool)
    with monkeypatch.context() as patch:
        patch.setattr(ordering, "ordered_samples", always)
        forced, _ = run(impl, unordered, interpret=True)
    rows = np.arange(40)[None, :] < np.array(UNORDERED.lengths)[:, None]
    assert not np.allclose(forced[rows], want[rows], atol=1e-2, equal_nan=False)
    with monkeypatch.context() as patch:
        patch.setattr(ordering, "ordered_samples", never)
        check_parity(impl, ordered, interpret=True)


@pytest.mark.parametrize("impl", IMPLS)
def test_flag_from_traced_inputs_under_jit(impl):
    """Positions and times as jit arguments: the flag is computed on tracers, per sample."""
    case = Case(batch=2, seq_len=24, order="ties", seed=25)
    q, k, v, arguments, _ = make_inputs(case)
    times = np.array(arguments.pop("timestamps"))
    times[1] = np.random.default_rng(0).permuted(times[1])  # sample 0 ordered, sample 1 not
    positions = arguments.pop("positions")

    @jax.jit
    def jitted(positions, times):
        return attention(q, k, v, **arguments, positions=positions, timestamps=times, impl=impl,
                         interpret=True)

    got = jitted(positions, jnp.asarray(times))
    want = attention(q, k, v, **arguments, positions=positions, timestamps=jnp.asarray(times),
                     impl="xla")
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=2e-5)
