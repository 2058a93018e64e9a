"""The feed simulator: determinism, the data contract, realistic rates and a learnable signal."""

import dataclasses

import numpy as np
import pytest

from genrank_jax.data.samples import SampleBuilder, SampleLayout
from genrank_jax.data.synthetic import SimulatedFeed, SimulatorConfig, simulate
from genrank_jax.data.tokens import TokenKind


@pytest.fixture(scope="module")
def feed() -> SimulatedFeed:
    return simulate(SimulatorConfig.preset("tests"))


def _arrays(feed):
    log = feed.dataset.interactions
    return dict(user_ids=log.user_ids, item_ids=log.item_ids, timestamps=log.timestamps, actions=log.actions,
                request_starts=log.request_starts, oracle=feed.dataset.oracle_probabilities,
                side=feed.dataset.catalog.side_features, content=feed.dataset.catalog.content,
                train=feed.dataset.train_requests, eval=feed.dataset.eval_requests,
                user_factors=feed.user_factors, item_factors=feed.item_factors)


def test_deterministic_per_seed(feed):
    again = simulate(SimulatorConfig.preset("tests"))
    for name, value in _arrays(feed).items():
        np.testing.assert_array_equal(value, _arrays(again)[name], err_msg=name)
    other = simulate(SimulatorConfig.preset("tests", seed=1))
    assert not np.array_equal(other.dataset.interactions.item_ids, feed.dataset.interactions.item_ids)
    assert not np.array_equal(other.dataset.interactions.timestamps, feed.dataset.interactions.timestamps)


def test_contract(feed):
    data, config = feed.dataset, feed.config
    data.validate()
    log = data.interactions
    assert data.name == "synthetic"
    assert log.user_ids.dtype == np.int32 and log.item_ids.dtype == np.int32
    assert log.timestamps.dtype == np.float64 and log.actions.dtype == np.uint8
    assert log.request_starts.dtype == np.int64
    assert data.oracle_probabilities.shape == log.actions.shape and data.oracle_probabilities.dtype == np.float32
    assert ((data.oracle_probabilities > 0) & (data.oracle_probabilities < 1)).all()
    assert data.spec.action_names == ("click", "like", "collect", "share")
    assert data.spec.side_vocab_sizes == (config.num_categories, config.num_age_buckets)
    assert data.catalog.content.shape == (config.num_items, config.content_dim)
    assert feed.user_factors.shape == (config.num_users, config.latent_dim)
    assert feed.item_factors.shape == (config.num_items, config.latent_dim)
    # sorted by (user, timestamp); a request is one user at one time
    order = np.lexsort((log.timestamps, log.user_ids))
    np.testing.assert_array_equal(order, np.arange(log.num_exposures))
    request = np.repeat(np.arange(log.num_requests), np.diff(log.request_starts))
    assert (log.user_ids == log.request_users()[request]).all()
    assert (log.timestamps == log.request_times()[request]).all()
    assert (np.diff(log.request_starts) == config.exposures_per_request).all()
    # requests per user within the configured range; every request in exactly one split
    per_user = np.bincount(log.request_users(), minlength=config.num_users)
    low, high = config.requests_per_user
    assert per_user.min() >= low and per_user.max() <= high
    both = np.concatenate([data.train_requests, data.eval_requests])
    np.testing.assert_array_equal(np.sort(both), np.arange(log.num_requests))
    # no item shown twice in one request
    items = log.item_ids.reshape(-1, config.exposures_per_request)
    assert (np.diff(np.sort(items, axis=1), axis=1) > 0).all()


def test_action_rates(feed):
    rates = dict(zip(feed.dataset.spec.action_names, feed.dataset.interactions.actions.mean(0)))
    assert 0.20 <= rates["click"] <= 0.35, rates
    assert 0.05 <= rates["like"] <= 0.10, rates
    assert 0.02 <= rates["collect"] <= 0.04, rates
    assert 0.005 <= rates["share"] <= 0.02, rates
    # the stored marginals are the probabilities the actions were drawn from
    oracle = feed.dataset.oracle_probabilities.mean(0)
    np.testing.assert_allclose(oracle, feed.dataset.interactions.actions.mean(0), rtol=0.15)


def test_deeper_actions_only_after_click(feed):
    actions = feed.dataset.interactions.actions
    assert actions[:, 1:].sum() > 0
    assert not actions[actions[:, 0] == 0, 1:].any()
    oracle = feed.dataset.oracle_probabilities
    assert (oracle[:, 1:] <= oracle[:, :1]).all()


def test_oracle_auc_is_learnable_not_trivial(feed):
    aucs = feed.oracle_auc("eval")
    assert set(aucs) == set(feed.dataset.spec.action_names)
    assert 0.65 <= aucs["click"] <= 0.85, aucs
    # most of it comes from what ids can teach: base affinity and item popularity
    log, config = feed.dataset.interactions, feed.config
    rows = feed.split_rows("eval")
    users, items = log.user_ids[rows], log.item_ids[rows]
    from_ids = (config.affinity_weight * np.einsum("nd,nd->n", feed.user_factors[users], feed.item_factors[items])
                + config.popularity_weight * feed.item_popularity[items])
    from genrank_jax.metrics import auc
    ids_auc = auc(log.actions[rows, 0], from_ids)
    assert ids_auc - 0.5 >= 0.7 * (aucs["click"] - 0.5), (ids_auc, aucs["click"])


def test_split_rows_cover_the_split(feed):
    log = feed.dataset.interactions
    rows = feed.split_rows("eval")
    expected = np.concatenate([np.arange(log.request_starts[r], log.request_starts[r + 1])
                               for r in feed.dataset.eval_requests])
    np.testing.assert_array_equal(rows, expected)
    assert len(feed.split_rows("train")) + len(rows) == log.num_exposures


def test_temporal_split(feed):
    times = feed.dataset.interactions.request_times()
    train, eval_ = feed.dataset.train_requests, feed.dataset.eval_requests
    assert len(train) and len(eval_)
    assert times[train].max() < times[eval_].min()
    assert abs(len(eval_) / len(times) - feed.config.eval_fraction) < 0.02
    # users' histories continue across the cutoff: many eval users also have train requests
    users = feed.dataset.interactions.request_users()
    assert len(np.intersect1d(users[train], users[eval_])) >= 0.2 * len(np.unique(users[eval_]))


def test_timestamps_are_sessions_with_a_day_rhythm(feed):
    log = feed.dataset.interactions
    times, users = log.request_times(), log.request_users()
    same_user = users[1:] == users[:-1]
    gaps = np.diff(times)[same_user]
    assert (gaps >= 0).all()
    assert np.mean(gaps < 600) > 0.3  # requests of one session, minutes apart
    assert np.mean(gaps > 3600) > 0.2  # gaps between sessions, hours or more
    hours = ((times - feed.config.epoch_seconds) % 86400) / 3600
    assert np.mean((hours >= 2) & (hours < 6)) < 0.02  # users sleep


def _content_r2(noise):
    config = SimulatorConfig.preset("tests", content_noise=noise, num_users=20)
    feed = simulate(config)
    content = feed.dataset.catalog.content.astype(np.float64)
    design = np.concatenate([content, np.ones((len(content), 1))], 1)
    coef, *_ = np.linalg.lstsq(design, feed.item_factors, rcond=None)
    residual = feed.item_factors - design @ coef
    return 1 - residual.var() / feed.item_factors.var()


def test_content_noise_controls_alignment():
    aligned, noisy = _content_r2(0.0), _content_r2(2.0)
    assert aligned > 0.999
    assert noisy < aligned - 0.2, (aligned, noisy)


@pytest.mark.parametrize("organization", ["action", "item"])
def test_sample_builder_on_simulated_requests(feed, organization):
    layout = SampleLayout(max_history=48, organization=organization)
    builder = SampleBuilder(feed.dataset, layout)
    requests = feed.dataset.eval_requests[:16]
    seq_len = int(builder.token_counts(requests).max())
    batch = builder.build(requests, seq_len)
    history = np.minimum(builder.history_count[requests], layout.max_history)
    m = feed.config.exposures_per_request
    expected = (2 * history if organization == "item" else history) + m
    np.testing.assert_array_equal(batch.lengths, expected)
    np.testing.assert_array_equal(batch.num_candidates, m)
    assert (history > 0).any()
    kinds = batch.kinds
    assert (kinds == TokenKind.CANDIDATE).sum() == m * len(requests)
    if organization == "item":
        assert (((kinds == TokenKind.ITEM).sum(1) == history).all()
                and ((kinds == TokenKind.ACTION).sum(1) == history).all())
    log = feed.dataset.interactions
    for b, request in enumerate(requests):
        start = log.request_starts[request]
        candidates = batch.item_ids[b, batch.lengths[b] - m:batch.lengths[b]]
        np.testing.assert_array_equal(candidates, log.item_ids[start:start + m])
        np.testing.assert_array_equal(batch.labels[b, batch.lengths[b] - m:batch.lengths[b]],
                                      log.actions[start:start + m])


def test_presets():
    for name in ("tests", "default", "benchmark"):
        config = SimulatorConfig.preset(name)
        assert isinstance(config, SimulatorConfig)
    assert SimulatorConfig.preset("default") == SimulatorConfig()
    with pytest.raises(ValueError, match="unknown preset"):
        SimulatorConfig.preset("huge")
    with pytest.raises(ValueError):
        SimulatorConfig(requests_per_user=(5, 2))
    assert dataclasses.replace(SimulatorConfig(), seed=3).seed == 3
