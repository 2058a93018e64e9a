"""The GPU kernels' tile rules, checked exhaustively on small shapes against the loop oracle.

`key_limits` / `pair_mask` (the mask the kernels build on masked tiles) must equal the contract
pair by pair, and the tiles that `interior_kv_steps` / `interior_q_blocks` let run without a
mask must hold only valid pairs (for the rows they keep).
"""

import itertools

import jax.numpy as jnp
import numpy as np

from genrank_jax.kernels import _gpu_tiles as tiles
from tests.kernels.oracle import attends

SEQ_LEN = 24


def _samples():
    return [(n, c) for n in range(SEQ_LEN + 1) for c in range(n + 1)]


def _contract(length, candidates):
    return np.array([[attends(i, j, length, candidates) for j in range(SEQ_LEN)]
                     for i in range(SEQ_LEN)])


def test_pair_mask_is_the_contract():
    index = jnp.arange(SEQ_LEN)
    for length, candidates in _samples():
        limits = tiles.key_limits(index[:, None], length, candidates)
        got = np.asarray(tiles.pair_mask(index[None, :], *limits))
        np.testing.assert_array_equal(got, _contract(length, candidates),
                                      err_msg=f"length {length}, candidates {candidates}")


def test_interior_tiles_hold_only_valid_pairs():
    interior_steps = interior_blocks = 0
    for (length, candidates), block_q, block_k in itertools.product(
            _samples(), (4, 8), (4, 8)):
        valid = _contract(length, candidates)
        # forward / dq: leading key steps of each query tile, rows below the length
        for q_start in range(0, SEQ_LEN, block_q):
            n_first, _, _ = tiles.kv_steps(q_start, block_q, block_k, length, candidates)
            n_interior = int(tiles.interior_kv_steps(q_start, block_k, length, candidates, n_first))
            rows = slice(q_start, min(q_start + block_q, length))
            keys = slice(0, n_interior * block_k)
            assert valid[rows, keys].all(), (length, candidates, q_start, n_interior)
            interior_steps += n_interior
        # dk/dv: a middle range of query tiles for each key tile, every row kept
        for k_start in range(0, SEQ_LEN, block_k):
            first, end = tiles.q_blocks(k_start, block_k, block_q, length, candidates)
            a, b = (int(x) for x in tiles.interior_q_blocks(k_start, block_k, block_q, length,
                                                            candidates, first, end))
            assert int(first) <= a <= b <= int(end)
            if b > a:
                block = valid[a * block_q:b * block_q, k_start:k_start + block_k]
                assert block.all(), (length, candidates, k_start, a, b)
                interior_blocks += b - a
    assert interior_steps > 1000 and interior_blocks > 1000  # the rules do skip masks
