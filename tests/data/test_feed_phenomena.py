"""Each feed phenomenon of the simulator moves the oracle probabilities the way its docstring says,
and with every strength at 0 the feed is unchanged."""

import dataclasses

import numpy as np
import pytest

from genrank_jax.data.synthetic import SimulatorConfig, simulate

BASE = dict(num_users=400, num_items=300, requests_per_user=(20, 40), horizon_days=21.0, seed=4)


def feed(**strengths):
    return simulate(SimulatorConfig(**{**BASE, **strengths}))


def logit(p):
    p = np.clip(p.astype(np.float64), 1e-9, 1 - 1e-9)
    return np.log(p) - np.log1p(-p)


def test_the_feed_preset_has_every_phenomenon_on():
    config = SimulatorConfig.preset("feed")
    for name in ("action_dynamics", "fatigue", "repeat_strength", "new_item_fraction", "trend_strength", "drift"):
        assert getattr(config, name) > 0, name
    assert dataclasses.replace(config, action_dynamics=0, fatigue=0, repeat_strength=0, new_item_fraction=0,
                               trend_strength=0, horizon_days=14.0) == SimulatorConfig.preset("default")


def test_strength_zero_changes_nothing_but_the_phenomenon_fields():
    plain = feed()
    other = feed(trending_fraction=0.5, trend_rise_days=3.0)  # parameters of a phenomenon that is off
    np.testing.assert_array_equal(plain.dataset.oracle_probabilities, other.dataset.oracle_probabilities)
    np.testing.assert_array_equal(plain.dataset.interactions.actions, other.dataset.interactions.actions)


def test_items_released_over_time_are_never_shown_before_release():
    sim = feed(new_item_fraction=0.4)
    log = sim.dataset.interactions
    released = sim.item_release_time[log.item_ids]
    assert (log.timestamps >= released).all()
    new = np.isfinite(released)
    assert 0.05 < new.mean() < 0.6  # they are shown once out
    # their share of exposures grows over time (more of them are out)
    early = log.timestamps < np.median(log.timestamps)
    assert new[~early].mean() > new[early].mean() + 0.05
    assert (sim.dataset.catalog.side_features[np.isfinite(sim.item_release_time), 1] == 0).all()


def test_a_trending_item_is_likelier_clicked_near_its_peak():
    """pop_i(t) rises by trend_strength near the peak: popularity_weight times that in the click logit
    (less what the recommender's wider audience near the peak takes back)."""
    def gap(sim):
        log = sim.dataset.interactions
        peak = sim.item_trend_peak[log.item_ids]
        trending = np.isfinite(peak)
        lag_days = np.abs(log.timestamps - peak) / 86400
        p = logit(sim.dataset.oracle_probabilities[:, 0])
        near, far = trending & (lag_days < 0.5), trending & (lag_days > 6)
        return p[near].mean() - p[far].mean()

    strong, off = gap(feed(trend_strength=2.0)), gap(feed())
    assert strong > off + 0.3 and abs(off) < 0.2, (strong, off)


def test_session_fatigue_lowers_clicks_on_a_category_seen_in_the_session():
    def gap(sim):
        log, cat = sim.dataset.interactions, sim.dataset.catalog.side_features[:, 0]
        users, items, times = log.user_ids, log.item_ids, log.timestamps
        p = logit(sim.dataset.oracle_probabilities[:, 0])
        seen = np.zeros(len(items), bool)
        order = np.lexsort((times, users))
        last = {}
        for r in order:  # seen: same user, same category, an earlier request under 30 min before
            key = (users[r], cat[items[r]])
            seen[r] = key in last and 0 < times[r] - last[key] < 1800
            last[key] = times[r]
        return p[seen].mean() - p[~seen].mean()

    assert gap(feed(fatigue=1.0)) < gap(feed()) - 0.3


def test_repeat_consumption_offers_and_rewards_recent_clicks():
    def recent_click_share_and_gap(sim):
        log = sim.dataset.interactions
        clicked_before, previous = np.zeros(log.num_exposures, bool), {}
        for q in range(log.num_requests):  # rows are per user, in time order
            rows = np.arange(log.request_starts[q], log.request_starts[q + 1])
            user = log.user_ids[rows[0]]
            mine = previous.setdefault(user, set())
            clicked_before[rows] = [item in mine for item in log.item_ids[rows]]
            mine.update(log.item_ids[rows][log.actions[rows, 0] == 1].tolist())
        p = logit(sim.dataset.oracle_probabilities[:, 0])
        return clicked_before.mean(), p[clicked_before].mean() - p[~clicked_before].mean()

    on_share, on_gap = recent_click_share_and_gap(feed(repeat_strength=1.5))
    off_share, off_gap = recent_click_share_and_gap(feed())
    assert on_share > off_share + 0.05 and on_gap > off_gap + 0.5, (on_share, off_share, on_gap, off_gap)


def test_action_conditioned_dynamics_make_likes_move_the_next_request():
    """After a like, the next request's click logits on the liked item's category rise more with
    action dynamics than without (a like pulls the interest state harder than a click)."""
    def lift(sim):
        log, cat = sim.dataset.interactions, sim.dataset.catalog.side_features[:, 0]
        p = logit(sim.dataset.oracle_probabilities[:, 0])
        lifted, other = [], []
        for q in range(log.num_requests - 1):
            rows, after = (np.arange(log.request_starts[i], log.request_starts[i + 1]) for i in (q, q + 1))
            if log.user_ids[rows[0]] != log.user_ids[after[0]]:
                continue
            liked = set(cat[log.item_ids[rows][log.actions[rows, 1] == 1]].tolist())
            if not liked:
                continue
            match = np.isin(cat[log.item_ids[after]], list(liked))
            lifted += p[after][match].tolist()
            other += p[after][~match].tolist()
        return np.mean(lifted) - np.mean(other)

    assert lift(feed(action_dynamics=2.0)) > lift(feed()) + 0.05


@pytest.mark.parametrize("name", ["action_dynamics", "fatigue", "repeat_strength", "trend_strength"])
def test_negative_strengths_are_refused(name):
    with pytest.raises(ValueError, match=name):
        SimulatorConfig(**{name: -1.0})
