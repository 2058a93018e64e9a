"""Leak builders read nothing after cutoff + horizon, and B/C read exactly what they claim."""

import numpy as np

from genrank_jax.leakage import InteractionLog, ProbeConfig, leaks

DAY = 86400.0


def _log(user, item, day, label, num_items=6):
    return InteractionLog(user=np.array(user), item=np.array(item), timestamp=np.array(day, float) * DAY,
                          labels=np.array(label), num_items=num_items)


def test_cooccurrence_uses_only_window_engagements_and_top_k():
    # window (10, 17] days: users 0 and 1 both engage items 1 and 2; user 0 also item 4.
    # item 3 is co-engaged with 1 only before the window, item 5 only after it.
    log = _log(user=[0, 1, 0, 1, 0, 0, 1, 0, 1, 0],
               item=[1, 1, 2, 2, 4, 3, 3, 5, 5, 1],
               day=[11, 12, 13, 14, 15, 5, 6, 20, 21, 9],
               label=[1, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    codes = leaks.item_codebook(6, 8, seed=3)
    feature = leaks.cooccurrence_neighbors(log, 10 * DAY, 7 * DAY, k=1, dim=8, seed=3)
    # item 1's neighbours: 2 (two shared users, cosine 1) beats 4 (one of two, cosine 1/sqrt 2)
    np.testing.assert_allclose(feature[1], codes[2], rtol=1e-6)
    np.testing.assert_allclose(feature[4], codes[1], rtol=1e-6)  # tie 1 vs 2 broken by lower id
    np.testing.assert_array_equal(feature[[0, 3, 5]], 0.0)
    wide = leaks.cooccurrence_neighbors(log, 10 * DAY, 7 * DAY, k=5, dim=8, seed=3)
    weight = np.array([1.0, 1 / np.sqrt(2)])  # cosines of item 1 with items 2 and 4
    np.testing.assert_allclose(wide[1], (weight[0] * codes[2] + weight[1] * codes[4]) / weight.sum(), rtol=1e-5)


def test_cooccurrence_ignores_unengaged_exposures():
    log = _log(user=[0, 0], item=[1, 2], day=[11, 12], label=[1, 0])
    assert not leaks.cooccurrence_neighbors(log, 10 * DAY, 7 * DAY).any()


def test_next_item_is_the_next_engagement_up_to_the_horizon():
    # user 0: engaged item 2 on day 3, item 3 on day 12 (in window), item 4 on day 30 (after it);
    # row 1 shares day 3 with an engagement, which is not "next"
    log = _log(user=[0, 0, 0, 0, 0, 1],
               item=[1, 5, 2, 3, 4, 1],
               day=[2, 3, 3, 12, 30, 11],
               label=[0, 0, 1, 1, 1, 1])
    codes = leaks.item_codebook(6, 4, seed=0)
    feature = leaks.next_item(log, 10 * DAY, 7 * DAY, dim=4)
    np.testing.assert_array_equal(feature[0], codes[2])   # day 2 -> the day-3 engagement
    np.testing.assert_array_equal(feature[1], codes[3])   # day 3 -> day 12, not its own request's
    np.testing.assert_array_equal(feature[3], 0.0)        # day 12 -> day 30 is beyond the horizon
    np.testing.assert_array_equal(feature[5], 0.0)        # user 1 never engages again
    window = leaks.next_item(log, 10 * DAY, 7 * DAY, dim=4, window_only=True)
    np.testing.assert_array_equal(window[0], codes[3])    # only window engagements count


def test_future_item_embeddings_ignore_everything_after_the_horizon():
    rng = np.random.default_rng(0)
    rows = 600
    user, item = rng.integers(0, 20, rows), rng.integers(0, 15, rows)
    day = rng.random(rows) * 40
    label = rng.integers(0, 2, rows)
    config = ProbeConfig(dim=4, hidden=(8,), epochs=1, batch_size=64)
    base = leaks.future_item_embeddings(_log(user, item, day, label, 15), 20 * DAY, 7 * DAY, 4, probe=config)
    assert base.shape == (15, 4)
    after = day > 27
    changed = leaks.future_item_embeddings(
        _log(user, np.where(after, 0, item), day, np.where(after, 1 - label, label), 15),
        20 * DAY, 7 * DAY, 4, probe=config)
    np.testing.assert_array_equal(base, changed)
    inside = (day > 20) & (day <= 27)
    moved = leaks.future_item_embeddings(_log(user, item, day, np.where(inside, 1 - label, label), 15),
                                         20 * DAY, 7 * DAY, 4, probe=config)
    assert np.abs(moved - base).max() > 1e-3  # the window is read
