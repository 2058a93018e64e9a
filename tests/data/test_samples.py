"""Samples and batches against brute-force reconstructions from the raw log.

The log is random and jagged (users with 0..7 requests of 1..5 exposures, gaps from seconds to
days) so truncation, user boundaries, capping and padding are all exercised.
"""

import dataclasses

import numpy as np
import pytest

from genrank_jax.data.batching import BatchPlan, bucket_length, iterate_batches, plan_batches
from genrank_jax.data.samples import SampleBuilder, SampleLayout, gap_buckets
from genrank_jax.data.schema import FeatureSpec, Interactions, ItemCatalog, RankingDataset
from genrank_jax.data.tokens import NO_ITEM, TokenKind

NUM_ITEMS, NUM_ACTIONS = 50, 3


def random_dataset(seed: int, num_users: int = 12, max_requests: int = 7) -> RankingDataset:
    rng = np.random.default_rng(seed)
    users, times, sizes = [], [], []
    for user in range(num_users):
        num_requests = rng.integers(1, max_requests + 1)  # a user with one request has an empty history
        clock = 1.7e9 + rng.random() * 86400
        for _ in range(num_requests):
            clock += float(rng.choice([rng.random() * 100, rng.random() * 7200, rng.random() * 5 * 86400]))
            users.append(user)
            times.append(clock)
            sizes.append(int(rng.integers(1, 6)))
    sizes = np.array(sizes)
    rows = int(sizes.sum())
    log = Interactions(
        user_ids=np.repeat(users, sizes).astype(np.int32),
        item_ids=rng.integers(0, NUM_ITEMS, rows).astype(np.int32),
        timestamps=np.repeat(times, sizes).astype(np.float64),
        actions=(rng.random((rows, NUM_ACTIONS)) < 0.3).astype(np.uint8),
        request_starts=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
    )
    catalog = ItemCatalog(side_features=rng.integers(0, 4, (NUM_ITEMS, 2)).astype(np.int32),
                          content=rng.standard_normal((NUM_ITEMS, 3)).astype(np.float32))
    spec = FeatureSpec(num_items=NUM_ITEMS, num_users=num_users, action_names=("a", "b", "c"),
                       side_vocab_sizes=(4, 4), content_dim=3)
    requests = np.arange(len(sizes))
    dataset = RankingDataset("random", spec, catalog, log, requests[: len(sizes) // 2], requests[len(sizes) // 2:])
    dataset.validate()
    return dataset


def expected_sample(dataset: RankingDataset, request: int, layout: SampleLayout):
    """Brute force: the sample's history rows (oldest first), candidate rows and each row's request."""
    log = dataset.interactions
    starts = log.request_starts
    user, time = log.request_users()[request], log.request_times()[request]
    row_request = np.repeat(np.arange(log.num_requests), np.diff(starts))
    history = [row for row in range(log.num_exposures) if log.user_ids[row] == user and row_request[row] < request]
    history = history[len(history) - min(len(history), layout.max_history):]
    candidates = list(range(starts[request], min(starts[request + 1], starts[request] + layout.max_candidates)))
    assert all(log.timestamps[row] <= time for row in history)
    return np.array(history, np.int64), np.array(candidates, np.int64), row_request


def expected_gap_bucket(dataset: RankingDataset, request: int, num_buckets: int) -> int:
    log = dataset.interactions
    users, times = log.request_users(), log.request_times()
    if request == 0 or users[request - 1] != users[request]:
        return 0
    minutes = (times[request] - times[request - 1]) / 60
    return min(1 + int(np.floor(np.log2(1 + minutes))), num_buckets - 1)


def test_gap_buckets_known_values():
    gaps = np.array([-1.0, 0.0, 30.0, 60.0, 180.0, 3600.0, 1e9])
    np.testing.assert_array_equal(gap_buckets(gaps, 8), [0, 1, 1, 2, 3, 6, 7])


def test_bucket_length_sequence():
    assert [bucket_length(t) for t in (1, 32, 33, 65, 97, 129, 193, 257, 385, 513, 769)] == \
        [32, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024]
    assert bucket_length(5, 8) == 8 and bucket_length(9, 8) == 16


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("organization", ["action", "item"])
def test_samples_match_brute_force(seed, organization):
    dataset = random_dataset(seed)
    log = dataset.interactions
    layout = SampleLayout(max_history=6, max_candidates=3, num_gap_buckets=8, num_request_slots=3,
                          organization=organization)
    builder = SampleBuilder(dataset, layout)
    requests = np.random.default_rng(seed).permutation(log.num_requests)[:10]
    seq_len = int(builder.token_counts(requests).max()) + 3  # some padding on every row
    batch = builder.build(requests, seq_len, batch_size=len(requests) + 2)
    assert batch.item_ids.shape == (len(requests) + 2, seq_len)
    request_times = log.request_times()
    for b, request in enumerate(requests):
        history, candidates, row_request = expected_sample(dataset, request, layout)
        n, m = len(history), len(candidates)
        h = 2 * n if organization == "item" else n
        assert batch.lengths[b] == h + m and batch.num_candidates[b] == m
        assert batch.user_ids[b] == log.request_users()[request]
        kinds, items = batch.kinds[b], batch.item_ids[b]
        # history: the most recent max_history exposures of this user only, oldest first
        if organization == "action":
            history_tokens = np.arange(n)
            assert (kinds[:n] == TokenKind.EXPOSURE).all()
            np.testing.assert_array_equal(items[:n], log.item_ids[history])
            np.testing.assert_array_equal(batch.actions[b, :n], log.actions[history])
        else:
            history_tokens = np.arange(0, 2 * n, 2)
            assert (kinds[0:2 * n:2] == TokenKind.ITEM).all() and (kinds[1:2 * n:2] == TokenKind.ACTION).all()
            np.testing.assert_array_equal(items[0:2 * n:2], log.item_ids[history])
            assert (items[1:2 * n:2] == NO_ITEM).all()
            np.testing.assert_array_equal(batch.actions[b, 1:2 * n:2], log.actions[history])
            assert not batch.actions[b, 0:2 * n:2].any()  # item tokens carry no actions
        # candidates share one position, right after the history
        assert (kinds[h:h + m] == TokenKind.CANDIDATE).all()
        np.testing.assert_array_equal(items[h:h + m], log.item_ids[candidates])
        np.testing.assert_array_equal(batch.positions[b, :h], np.arange(h))
        assert (batch.positions[b, h:h + m] == h).all()
        np.testing.assert_array_equal(batch.candidate_index[b, :m], np.arange(h, h + m))
        assert (batch.candidate_index[b, m:] == seq_len).all()
        # labels only on candidates; candidates carry no actions
        np.testing.assert_array_equal(batch.labels[b, h:h + m], log.actions[candidates])
        assert not batch.labels[b, :h].any() and not batch.labels[b, h + m:].any()
        assert not batch.actions[b, h:].any()
        # side features and content of each item token
        has_item = np.concatenate([history_tokens, np.arange(h, h + m)])
        item_rows = np.concatenate([history, candidates])
        np.testing.assert_array_equal(batch.side[b, has_item], dataset.catalog.side_features[log.item_ids[item_rows]])
        np.testing.assert_array_equal(batch.content[b, has_item], dataset.catalog.content[log.item_ids[item_rows]])
        # per-token request features: index among the sample's requests (capped), gap bucket, time
        token_rows = np.concatenate([np.repeat(history, 2) if organization == "item" else history, candidates])
        token_requests = row_request[token_rows]
        distinct = np.unique(token_requests)
        expected_index = np.minimum(np.searchsorted(distinct, token_requests), layout.num_request_slots - 1)
        np.testing.assert_array_equal(batch.request_index[b, :h + m], expected_index)
        expected_gaps = [expected_gap_bucket(dataset, r, layout.num_gap_buckets) for r in token_requests]
        np.testing.assert_array_equal(batch.gap_bucket[b, :h + m], expected_gaps)
        relative = batch.timestamps[b, :h + m]
        np.testing.assert_allclose(relative, log.timestamps[token_rows] - request_times[request], atol=0.01)
        assert (relative <= 0).all() and (relative[h:] == 0).all()
        # padding is empty
        assert (kinds[h + m:] == TokenKind.PAD).all() and (items[h + m:] == NO_ITEM).all()
        assert not batch.timestamps[b, h + m:].any() and not batch.side[b, h + m:].any()
    # extra batch rows are empty samples
    assert (batch.lengths[len(requests):] == 0).all() and (batch.kinds[len(requests):] == TokenKind.PAD).all()


def test_history_truncation_keeps_most_recent_and_zero_history():
    dataset = random_dataset(4, num_users=6)
    log = dataset.interactions
    last = log.num_requests - 1  # the last request of the last user
    full = SampleBuilder(dataset, SampleLayout(max_history=10_000))
    n = int(full.history_count[last])
    assert n >= 2
    batch = SampleBuilder(dataset, SampleLayout(max_history=2)).build([last], 16)
    start = log.request_starts[last]
    np.testing.assert_array_equal(batch.item_ids[0, :2], log.item_ids[start - 2:start])
    empty = SampleBuilder(dataset, SampleLayout(max_history=0)).build([last], 8)
    assert (empty.lengths[0] == empty.num_candidates[0]
            and (empty.kinds[0, :empty.lengths[0]] == TokenKind.CANDIDATE).all())


def test_build_rejects_too_short_seq_len_and_too_many_requests():
    dataset = random_dataset(0)
    builder = SampleBuilder(dataset, SampleLayout())
    requests = np.arange(4)
    with pytest.raises(ValueError, match="seq_len"):
        builder.build(requests, int(builder.token_counts(requests).max()) - 1)
    with pytest.raises(ValueError, match="fit a batch"):
        builder.build(requests, 512, batch_size=3)


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_batch_plan_deterministic_and_covers_every_request_once(drop_remainder):
    dataset = random_dataset(1, num_users=60)
    builder = SampleBuilder(dataset, SampleLayout(max_history=20))
    requests = dataset.interactions.num_requests
    plan = BatchPlan(batch_size=7, seed=3, window_batches=2, drop_remainder=drop_remainder)
    split = np.arange(requests)
    first = plan_batches(builder, split, plan, epoch=0)
    again = plan_batches(builder, split, plan, epoch=0)
    assert len(first) == len(again) and all(np.array_equal(a, b) for a, b in zip(first, again))
    other_epoch = plan_batches(builder, split, plan, epoch=1)
    assert not np.array_equal(np.concatenate(first), np.concatenate(other_epoch))
    other_seed = plan_batches(builder, split, BatchPlan(batch_size=7, seed=4, window_batches=2,
                                                        drop_remainder=drop_remainder), epoch=0)
    assert not np.array_equal(np.concatenate(first), np.concatenate(other_seed))
    served = np.concatenate(first)
    assert len(np.unique(served)) == len(served)  # nothing twice
    if drop_remainder:
        assert all(len(group) == 7 for group in first)
        assert len(served) == requests // 7 * 7  # only the one partial batch is dropped
    else:
        np.testing.assert_array_equal(np.sort(served), split)
    unshuffled = plan_batches(builder, split, BatchPlan(batch_size=7, shuffle=False, window_batches=1))
    # without shuffling, batches follow the split's order, each sorted by length
    np.testing.assert_array_equal(np.sort(unshuffled[0]), split[:7])
    assert all((np.diff(builder.token_counts(group)) >= 0).all() for group in unshuffled)


def test_iterate_batches_pads_to_buckets_and_reports_padding():
    dataset = random_dataset(2, num_users=80, max_requests=40)  # samples of 1 to ~200 tokens
    builder = SampleBuilder(dataset, SampleLayout(max_history=160))
    split = np.arange(dataset.interactions.num_requests)

    def mean_padding(window_batches):
        plan = BatchPlan(batch_size=8, seed=0, window_batches=window_batches)
        batches = list(iterate_batches(builder, split, plan))
        total = sum(int(b.lengths.sum()) for b in batches)
        assert total == builder.token_counts(split).sum()  # every token of every sample, once
        for batch in batches:
            assert batch.seq_len == bucket_length(int(batch.lengths.max()))
            assert batch.padding_ratio() == pytest.approx(1 - batch.lengths.sum() / (batch.batch_size * batch.seq_len))
            assert 0 <= batch.padding_ratio() < 1
        return np.mean([b.padding_ratio() for b in batches])

    # sorting by length inside windows packs similar lengths together
    assert mean_padding(16) < mean_padding(1)
    # resuming skips exactly the served batches
    plan = BatchPlan(batch_size=8, seed=0)
    all_batches = list(iterate_batches(builder, split, plan, epoch=2))
    resumed = list(iterate_batches(builder, split, plan, epoch=2, skip=3))
    assert len(resumed) == len(all_batches) - 3
    np.testing.assert_array_equal(resumed[0].item_ids, all_batches[3].item_ids)


def test_slot_is_the_exposure_index_inside_its_request():
    from genrank_jax.data.synthetic import SimulatorConfig, simulate

    dataset = simulate(SimulatorConfig.preset("tests")).dataset
    builder = SampleBuilder(dataset, SampleLayout(max_history=30))
    requests = dataset.train_requests[builder.history_count[dataset.train_requests] > 0][:8]
    batch = builder.build(requests, int(builder.token_counts(requests).max()))
    for b in range(len(requests)):
        m, n = batch.num_candidates[b], batch.lengths[b] - batch.num_candidates[b]
        np.testing.assert_array_equal(batch.slot[b, n:n + m], np.arange(m))
        # inside the history the slot restarts at 0 exactly where a new request begins
        new_request = np.diff(batch.request_index[b, :n]) != 0
        np.testing.assert_array_equal(batch.slot[b, 1:n][new_request], 0)
        np.testing.assert_array_equal(np.diff(batch.slot[b, :n])[~new_request], 1)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("organization", ["action", "item"])
def test_build_is_bit_identical_to_the_loop_reference(seed, organization):
    """The vectorised build against the per-request loop it replaced: every array, dtype and shape."""
    from tests.data.build_reference import reference_build

    rng = np.random.default_rng(100 + seed)
    dataset = random_dataset(seed, num_users=int(rng.integers(3, 15)), max_requests=int(rng.integers(1, 9)))
    if seed % 2:  # a user's own log: timeline users map to (shared) model user rows
        log = dataset.interactions
        rows = rng.integers(0, dataset.spec.num_users, dataset.spec.num_users).astype(np.int32)
        dataset = dataclasses.replace(dataset, interactions=dataclasses.replace(log, user_rows=rows))
    layout = SampleLayout(max_history=int(rng.integers(0, 9)), max_candidates=int(rng.integers(1, 5)),
                          num_gap_buckets=8, num_request_slots=int(rng.integers(1, 4)),
                          num_slots=int(rng.integers(1, 4)), organization=organization)
    builder = SampleBuilder(dataset, layout)
    num_requests = dataset.interactions.num_requests
    for count in (0, 1, int(rng.integers(2, num_requests + 1))):
        requests = rng.choice(num_requests, count, replace=False)
        seq_len = int(builder.token_counts(requests).max(initial=1)) + int(rng.integers(0, 4))
        for batch_size, slots in ((None, None), (count + int(rng.integers(1, 4)), 7)):
            got = builder.build(requests, seq_len, batch_size, candidate_slots=slots)
            want = reference_build(builder, requests, seq_len, batch_size, candidate_slots=slots)
            for field in dataclasses.fields(want):
                a, b = getattr(got, field.name), getattr(want, field.name)
                if b is None:  # aggregates: the loop predates them, and this layout builds none
                    assert a is None, field.name
                    continue
                assert a.dtype == b.dtype and a.shape == b.shape, field.name
                np.testing.assert_array_equal(a, b, err_msg=field.name)
