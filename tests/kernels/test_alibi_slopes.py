"""The ALiBi slopes' values: Press et al.'s geometric sequence, written out by hand."""

import numpy as np

from genrank_jax.kernels import alibi_slopes


def test_eight_heads_are_the_papers_halves():
    # max_bias 8 over 8 heads: 2^-1, 2^-2, ..., 2^-8 (the ALiBi paper's slopes for 8 heads)
    np.testing.assert_array_equal(np.asarray(alibi_slopes(8)), [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64,
                                                                1 / 128, 1 / 256])


def test_max_bias_and_head_count_set_the_ratio():
    slopes = np.asarray(alibi_slopes(4, max_bias=16.0), np.float64)
    np.testing.assert_allclose(slopes, [2.0 ** -4, 2.0 ** -8, 2.0 ** -12, 2.0 ** -16], rtol=1e-7)
    two = np.asarray(alibi_slopes(2), np.float64)
    np.testing.assert_allclose(two, [2.0 ** -4, 2.0 ** -8], rtol=1e-7)
    assert alibi_slopes(6).dtype == np.float32
