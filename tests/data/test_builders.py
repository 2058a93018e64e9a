"""TFDS builders (MovieLens in four file formats, KuaiRand), loading, splits and load_dataset.

Fixture files are written into tmp_path from a known log (tests/data/fixtures.py), so expected
values are computed from that log, not from the code under test.
"""

import datetime
import logging

import numpy as np
import pytest

from genrank_jax.data import sources
from genrank_jax.data.batching import BatchPlan, iterate_batches
from genrank_jax.data.builders.movielens import rating_actions
from genrank_jax.data.builders.rows import DataError, MalformedRowError, MissingFileError
from genrank_jax.data.samples import SampleBuilder, SampleLayout
from tests.data import fixtures


def load(source, raw, tmp_path, **options):
    return sources.load_dataset(source, data_dir=raw, tfds_dir=tmp_path / "tfds", **options)


def rows_of(log, requests):
    starts = log.request_starts
    return (np.concatenate([np.arange(starts[r], starts[r + 1]) for r in requests]) if len(requests)
            else np.zeros(0, int))


@pytest.fixture(scope="module")
def ml_log():
    return fixtures.movielens_log(seed=1)


@pytest.fixture(scope="module")
def ml_datasets(ml_log, tmp_path_factory):
    """format -> RankingDataset (last_request split), each built from its own files."""
    out = {}
    for fmt, (config, write) in fixtures.MOVIELENS_WRITERS.items():
        folder = tmp_path_factory.mktemp(fmt)
        write(folder / "raw", ml_log)
        out[fmt] = load(f"movielens:{config}", folder / "raw", folder, split="last_request")
    return out


@pytest.mark.parametrize("fmt", sorted(fixtures.MOVIELENS_WRITERS))
def test_movielens_format_loads_the_known_log(fmt, ml_datasets, ml_log):
    data = ml_datasets[fmt]
    data.validate()
    log = data.interactions
    assert data.info["format"] == fmt
    assert log.num_exposures == len(ml_log.users)
    assert (data.spec.num_users, data.spec.num_items) == (len(np.unique(ml_log.users)), len(np.unique(ml_log.items)))
    # rows sorted by (user, time, item) with dense ids in raw-id order
    order = np.lexsort((ml_log.items, ml_log.times, ml_log.users))
    np.testing.assert_array_equal(log.user_ids, np.searchsorted(np.unique(ml_log.users), ml_log.users[order]))
    np.testing.assert_array_equal(log.item_ids, np.searchsorted(np.unique(ml_log.items), ml_log.items[order]))
    shift = fixtures.TIME_SHIFT.get(fmt, 0)
    np.testing.assert_array_equal(log.timestamps, ml_log.times[order].astype(np.float64) + shift)
    ratings = ml_log.ratings[order]
    np.testing.assert_array_equal(log.actions[:, 0], ratings >= 4)  # like
    np.testing.assert_array_equal(log.actions[:, 1], ratings == 5)  # love
    np.testing.assert_array_equal(log.actions[:, 2], ratings <= 2)  # dislike
    np.testing.assert_array_equal(log.extras["rating"], ratings)
    # one request per session of the fixture (sessions are short, so the 64-rating cap never cuts)
    assert log.num_requests == len(np.unique(ml_log.session))
    np.testing.assert_array_equal(np.unique(ml_log.session[order][log.request_starts[:-1]]).size, log.num_requests)


def test_movielens_formats_agree(ml_datasets):
    reference = ml_datasets["grouplens-100k"]
    for fmt, data in ml_datasets.items():
        for name in ("user_ids", "item_ids", "actions", "request_starts"):
            np.testing.assert_array_equal(getattr(data.interactions, name), getattr(reference.interactions, name),
                                          err_msg=fmt)
        np.testing.assert_array_equal(data.interactions.timestamps - fixtures.TIME_SHIFT.get(fmt, 0),
                                      reference.interactions.timestamps, err_msg=fmt)
        # genres and years agree across formats; the vocabularies too
        np.testing.assert_array_equal(data.catalog.side_features, reference.catalog.side_features, err_msg=fmt)
        assert data.spec == reference.spec, fmt
        if fmt != "grouplens-csv":  # 20m/32m have no user file
            for name, column in reference.user_features.items():
                np.testing.assert_array_equal(data.user_features[name], column, err_msg=f"{fmt} {name}")
    assert ml_datasets["grouplens-csv"].user_features == {}


def test_movielens_side_features_follow_the_catalog(ml_datasets, ml_log):
    data = ml_datasets["recbole"]
    items = np.unique(ml_log.items)
    catalog = {int(i): (g, y) for i, g, y in zip(ml_log.item_ids, ml_log.item_genres, ml_log.item_years)}
    genre_names = sorted({g[0] for g, _ in catalog.values()})
    for dense, raw in enumerate(items):
        genres, year = catalog[int(raw)]
        first, _, year_bucket = data.catalog.side_features[dense]
        assert first == 1 + genre_names.index(genres[0])
        assert year_bucket == 1 + (year - 1920) // 5
    ages = data.user_features["age_bucket"]
    expected = 1 + np.searchsorted([18, 25, 35, 45, 50, 56], ml_log.user_ages, side="right")
    np.testing.assert_array_equal(ages, expected)


def test_rating_actions_half_stars():
    np.testing.assert_array_equal(rating_actions(np.array([5.0, 4.5, 4.0, 3.0, 2.5, 2.0, 0.5])),
                                  [[1, 1, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 1], [0, 0, 1]])


def test_requests_split_by_gap(ml_datasets):
    log = ml_datasets["recbole"].interactions
    starts = log.request_starts
    for r in range(log.num_requests):
        rows = np.arange(starts[r], starts[r + 1])
        assert np.all(log.user_ids[rows] == log.user_ids[rows[0]])
        assert np.all(np.diff(log.timestamps[rows]) <= 1800)
        if r and log.user_ids[starts[r] - 1] == log.user_ids[starts[r]]:
            assert log.timestamps[starts[r]] - log.timestamps[starts[r] - 1] > 1800


def test_request_gap_and_size_options(ml_log, tmp_path):
    fixtures.write_recbole(tmp_path / "raw", ml_log)
    huge_gap = load("movielens:100k", tmp_path / "raw", tmp_path, split="last_request", request_gap_seconds=1e12)
    assert huge_gap.interactions.num_requests == huge_gap.spec.num_users
    capped = load("movielens:100k", tmp_path / "raw", tmp_path, split="last_request", max_request_size=2)
    assert np.diff(capped.interactions.request_starts).max() <= 2


def test_temporal_split(ml_log, tmp_path):
    fixtures.write_grouplens_100k(tmp_path / "raw", ml_log)
    data = load("movielens:100k", tmp_path / "raw", tmp_path)
    log = data.interactions
    train, evaluation = rows_of(log, data.train_requests), rows_of(log, data.eval_requests)
    assert len(train) + len(evaluation) == log.num_exposures and len(evaluation) > 0 and len(train) > 0
    assert log.timestamps[train].max() < log.timestamps[evaluation].min()
    assert log.timestamps[evaluation].min() >= data.info["cutoff"]
    assert abs(len(train) / log.num_exposures - 0.8) < 0.1
    cutoff = float(np.median(ml_log.times))
    explicit = load("movielens:100k", tmp_path / "raw", tmp_path, cutoff=cutoff)
    evaluation = rows_of(explicit.interactions, explicit.eval_requests)
    assert len(evaluation) == np.sum(ml_log.times >= cutoff)


def test_last_request_split(ml_datasets):
    data = ml_datasets["grouplens-1m"]
    users = data.interactions.request_users()
    multi = np.flatnonzero(np.bincount(users, minlength=data.spec.num_users) >= 2)
    np.testing.assert_array_equal(users[data.eval_requests], multi)  # one eval request per such user
    for r in data.eval_requests:
        assert r == np.flatnonzero(users == users[r]).max()  # ... and it is that user's last
    assert set(data.train_requests) | set(data.eval_requests) == set(range(data.interactions.num_requests))


def test_loading_is_deterministic_and_cached(ml_log, tmp_path):
    fixtures.write_grouplens_1m(tmp_path / "raw", ml_log)
    first = load("movielens:1m", tmp_path / "raw", tmp_path / "a")
    again = load("movielens:1m", tmp_path / "raw", tmp_path / "a")  # from the cache
    fresh = load("movielens:1m", tmp_path / "raw", tmp_path / "b")  # rebuilt elsewhere
    assert first.info["prepared_dir"] == again.info["prepared_dir"] != fresh.info["prepared_dir"]
    for other in (again, fresh):
        for name in ("user_ids", "item_ids", "timestamps", "actions", "request_starts"):
            np.testing.assert_array_equal(getattr(first.interactions, name), getattr(other.interactions, name))
        np.testing.assert_array_equal(first.train_requests, other.train_requests)
        np.testing.assert_array_equal(first.eval_requests, other.eval_requests)
        np.testing.assert_array_equal(first.catalog.side_features, other.catalog.side_features)


@pytest.mark.parametrize("config, expected", [("100k", "u.data"), ("1m", "ratings.dat"), ("20m", "ratings.csv")])
def test_missing_file_names_it(config, expected, tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(MissingFileError, match=rf"{expected}.*grouplens\.org"):
        load(f"movielens:{config}", tmp_path / "raw", tmp_path)


def test_missing_companion_file_names_it(ml_log, tmp_path):
    fixtures.write_grouplens_1m(tmp_path / "raw", ml_log)
    (tmp_path / "raw" / "movies.dat").unlink()
    with pytest.raises(MissingFileError, match="movies.dat"):
        load("movielens:1m", tmp_path / "raw", tmp_path)


def test_side_file_match_rates_are_reported_and_a_foreign_file_refused(ml_log, tmp_path, caplog):
    """A .item/.user whose ids match none of the log's used to give all-zero features silently."""
    raw = tmp_path / "raw"
    fixtures.write_recbole(raw, ml_log)
    data = load("movielens:100k", raw, tmp_path / "ok")
    assert {role: entry["match_rate"] for role, entry in data.info["side_files"].items()} == {"items": 1.0,
                                                                                           "users": 1.0}
    assert data.info["side_files"]["users"]["file"].endswith("ml-100k.user")
    lines = (raw / "ml-100k.user").read_text().splitlines()
    # ids shifted past the log's: no user of the log has a row
    (raw / "ml-100k.user").write_text("\n".join([lines[0]] + [f"{1000 + i}\t" + row.split("\t", 1)[1]
                                                               for i, row in enumerate(lines[1:])]) + "\n")
    with pytest.raises(DataError, match=r"ml-100k\.user: only 0\.0% of the log's 6 users have a row in it"):
        load("movielens:100k", raw, tmp_path / "foreign")
    # one of six users kept: 17% still refused; five of six: loads with a warning naming the rate
    (raw / "ml-100k.user").write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(DataError, match=r"only 16\.7% of the log's 6 users"):
        load("movielens:100k", raw, tmp_path / "one")
    (raw / "ml-100k.user").write_text("\n".join(lines[:6]) + "\n")
    with caplog.at_level(logging.INFO):
        data = load("movielens:100k", raw, tmp_path / "five")
    assert data.info["side_files"]["users"]["match_rate"] == pytest.approx(5 / 6)
    assert any(r.levelno == logging.WARNING and "83.3% of the log's 6 users" in r.getMessage() for r in caplog.records)


def test_absent_optional_side_files_are_said(ml_log, tmp_path, caplog):
    raw = tmp_path / "raw"
    fixtures.write_recbole(raw, ml_log)
    (raw / "ml-100k.item").unlink()
    (raw / "ml-100k.user").unlink()
    with caplog.at_level(logging.WARNING):
        data = load("movielens:100k", raw, tmp_path)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no ml-100k.item beside it: every item side features is 0" in m for m in warned), warned
    assert any("no ml-100k.user beside it" in m for m in warned), warned
    assert data.info["side_files"] == {}


def test_swapped_user_and_item_columns_are_refused(ml_log, tmp_path):
    """u.data with its user and item columns swapped used to load (items as users)."""
    raw = tmp_path / "raw"
    fixtures.write_grouplens_100k(raw, ml_log)
    rows = [line.split("\t") for line in (raw / "u.data").read_text().splitlines()]
    (raw / "u.data").write_text("\n".join("\t".join([i, u, r, t]) for u, i, r, t in rows) + "\n")
    with pytest.raises(DataError, match=r"user and item columns look swapped: 0% of its 10 users are in u\.user"):
        load("movielens:100k", raw, tmp_path)


def test_malformed_rows_raise_with_line_or_are_skipped(ml_log, tmp_path):
    raw = tmp_path / "raw"
    fixtures.write_grouplens_100k(raw, ml_log)
    lines = (raw / "u.data").read_text().splitlines()
    lines[4] = "3\t5\tfive\t880000000"  # line 5
    lines.insert(9, "7\t9")  # line 10: too few fields
    (raw / "u.data").write_text("\n".join(lines) + "\n")
    with pytest.raises(MalformedRowError, match=r"u\.data:5: bad value"):
        load("movielens:100k", raw, tmp_path)
    data = load("movielens:100k", raw, tmp_path, skip_bad_rows=True)
    assert data.info["bad_rows"] == {"u.data": 2}
    assert data.interactions.num_exposures == len(ml_log.users) - 1  # one real row replaced, one added


def test_ids_with_digit_grouping_are_malformed_rows(ml_log, tmp_path):
    """Python's int() reads `1_977` as 1977 (and float() `880_000_000`): a raw log's id is digits only."""
    raw = tmp_path / "raw"
    fixtures.write_grouplens_100k(raw, ml_log)
    lines = (raw / "u.data").read_text().splitlines()
    lines[2] = "\t".join(["1_0"] + lines[2].split("\t")[1:])  # user 10 is in the log
    lines[6] = "\t".join(lines[6].split("\t")[:3] + ["880_000_000"])
    (raw / "u.data").write_text("\n".join(lines) + "\n")
    with pytest.raises(MalformedRowError, match=r"u\.data:3: bad value \('1_0' is not an integer\)"):
        load("movielens:100k", raw, tmp_path)
    data = load("movielens:100k", raw, tmp_path, skip_bad_rows=True)
    assert data.info["bad_rows"] == {"u.data": 2}


def test_malformed_csv_header(ml_log, tmp_path):
    raw = tmp_path / "raw"
    fixtures.write_grouplens_csv(raw, ml_log)
    text = (raw / "ratings.csv").read_text().replace("timestamp", "time", 1)
    (raw / "ratings.csv").write_text(text)
    with pytest.raises(DataError, match=r"ratings\.csv:1: header has no column 'timestamp'"):
        load("movielens:20m", raw, tmp_path)


def test_kuairand(tmp_path):
    truth = fixtures.kuairand_log(seed=2)
    fixtures.write_kuairand(tmp_path / "raw" / "data", truth)  # the archive's data/ subfolder
    data = load("kuairand:pure", tmp_path / "raw", tmp_path, split="last_request")
    data.validate()
    log = data.interactions
    rows = sorted(truth.rows, key=lambda r: (r["user_id"], r["time_ms"], r["video_id"]))
    assert log.num_exposures == len(rows)
    assert data.spec.action_names == ("click", "like", "follow", "comment", "forward", "hate", "long_view")
    expected_actions = np.array([[r[name] for name in fixtures.KUAIRAND_ACTIONS] for r in rows])
    np.testing.assert_array_equal(log.actions, expected_actions)
    np.testing.assert_array_equal(log.extras["is_rand"], [r["is_rand"] for r in rows])
    np.testing.assert_array_equal(log.extras["tab"], [r["tab"] for r in rows])
    np.testing.assert_array_equal(log.timestamps, [r["time_ms"] / 1000 for r in rows])
    users = np.unique([r["user_id"] for r in rows])
    np.testing.assert_array_equal(log.user_ids, np.searchsorted(users, [r["user_id"] for r in rows]))
    # requests: the fixture's sessions (gaps < 60 s inside, hours between), cut every 16 exposures
    sessions = np.array([r["session"] for r in rows])
    session_sizes = np.unique(sessions, return_counts=True)[1]
    assert log.num_requests == np.sum(-(-session_sizes // 16))
    # side features: first tag, duration buckets; unseen videos are absent from the catalog
    videos = np.unique([r["video_id"] for r in rows])
    names = data.info["side_feature_names"]
    tag, duration = names.index("tag"), names.index("duration_bucket")
    first_tags = {int(v): t.strip('"').split(",")[0] for v, t in zip(truth.video_ids, truth.tags)}
    tag_vocab = sorted({t for t in first_tags.values() if t})
    durations = {int(v): d for v, d in zip(truth.video_ids, truth.durations)}
    for dense, raw in enumerate(videos):
        t = first_tags[int(raw)]
        assert data.catalog.side_features[dense, tag] == (1 + tag_vocab.index(t) if t else 0)
        d = durations[int(raw)]
        assert data.catalog.side_features[dense, duration] == (1 + int(np.log2(1 + int(d) / 1000)) if d else 0)
    assert set(data.user_features) >= {"user_active_degree", "is_video_author"}


def test_kuairand_user_features_and_missing_file(tmp_path):
    truth = fixtures.kuairand_log(seed=3)
    fixtures.write_kuairand(tmp_path / "raw", truth)
    data = load("kuairand:pure", tmp_path / "raw", tmp_path)
    # users are dense in sorted raw-id order; is_video_author was written as k % 2 for the k-th user
    author = {int(u): k % 2 for k, u in enumerate(truth.user_ids)}
    for dense, raw in enumerate(sorted(author)):
        assert data.user_features["is_video_author"][dense] == 1 + author[raw]  # codes: "0" -> 1, "1" -> 2
    (tmp_path / "raw" / "video_features_basic_pure.csv").unlink()
    with pytest.raises(MissingFileError, match=r"video_features_basic_pure\.csv.*kuairand\.com"):
        load("kuairand:pure", tmp_path / "raw", tmp_path / "other")
    (tmp_path / "raw" / "log_random_4_22_to_5_08_pure.csv").unlink()
    with pytest.raises(MissingFileError, match=r"log_random_4_22_to_5_08_pure\.csv"):
        load("kuairand:pure", tmp_path / "raw", tmp_path / "other")


def test_unknown_source_and_missing_data_dir():
    with pytest.raises(ValueError, match="known sources:.*movielens:100k.*kuairand:pure"):
        sources.load_dataset("movielens:10k")
    with pytest.raises(ValueError, match="data_dir"):
        sources.load_dataset("movielens:100k")


def test_shared_ml100k(shared_data, tmp_path):
    data = load("movielens:100k", shared_data / "ml-100k", tmp_path)
    log = data.interactions
    assert (log.num_exposures, data.spec.num_users, data.spec.num_items) == (100_000, 943, 1682)
    assert data.info["format"] == "recbole" and data.info["bad_rows"] == {}
    assert len(data.train_requests) + len(data.eval_requests) == log.num_requests
    builder = SampleBuilder(data, SampleLayout(max_history=64, max_candidates=64))
    plan = BatchPlan(batch_size=32, seed=0)
    batches = iterate_batches(builder, data.train_requests, plan)
    first = next(batches)
    assert first.item_ids.shape[0] == 32 and first.labels.shape[-1] == 3
    assert first.side.shape[-1] == 3 and int(first.num_candidates.sum()) > 0
    resumed = next(iterate_batches(builder, data.train_requests, plan, skip=1))
    np.testing.assert_array_equal(next(batches).item_ids, resumed.item_ids)


def test_read_table_chunks_agree(ml_log, tmp_path, monkeypatch):
    from genrank_jax.data.builders import rows
    fixtures.write_grouplens_csv(tmp_path, ml_log)
    columns = {"userId": int, "rating": float, "timestamp": int}
    whole = rows.read_table(tmp_path / "ratings.csv", columns, sep=",", header=True, bad=rows.BadRows())
    monkeypatch.setattr(rows, "CHUNK_ROWS", 7)
    chunked = rows.read_table(tmp_path / "ratings.csv", columns, sep=",", header=True, bad=rows.BadRows())
    for key in columns:
        np.testing.assert_array_equal(chunked[key], whole[key])
    np.testing.assert_array_equal(whole["userId"], ml_log.users)


def test_shared_ml_latest_small(shared_data, tmp_path):
    """movielens:latest-small reads GroupLens' 2018 development edition as its README documents it."""
    data = load("movielens:latest-small", shared_data / "ml-latest-small", tmp_path)
    log = data.interactions
    # README.txt: 100836 ratings by 610 users; 9,724 of its 9,742 movies have a rating
    assert (log.num_exposures, data.spec.num_users, data.spec.num_items) == (100_836, 610, 9724)
    assert data.info["format"] == "grouplens-csv" and data.info["bad_rows"] == {}
    assert data.info["side_files"]["items"]["match_rate"] == 1.0
    first, last = (datetime.datetime.fromtimestamp(t, datetime.timezone.utc).date()
                   for t in (log.timestamps.min(), log.timestamps.max()))
    assert (str(first), str(last)) == ("1996-03-29", "2018-09-24")
    rating = np.asarray(log.extras["rating"])
    assert set(np.unique(rating)) == {0.5 * k for k in range(1, 11)}  # half stars
    np.testing.assert_array_equal(log.actions[:, 0], rating >= 4)  # 4.5 is a like ...
    np.testing.assert_array_equal(log.actions[:, 1], rating == 5)  # ... but not a love
    # the same files under another config's name are refused with the right name
    with pytest.raises(DataError, match="movielens:latest-small"):
        load("movielens:32m", shared_data / "ml-latest-small", tmp_path / "other")
