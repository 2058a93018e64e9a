"""A user's own log (genrank_jax/data/own_log): loading, the train-only vocabulary, the cache, Beam."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from genrank_jax.data import load_dataset
from genrank_jax.data.own_log import Vocabulary, prepare_log
from genrank_jax.data.own_log.loading import read_records
from genrank_jax.data.own_log.vocabulary import IdVocabulary, keys_of, string_key
from tests.data import own_log_files as files


def load(log, schema, tmp_path, **options):
    return load_dataset(f"log:{log}", schema=schema, tfds_dir=tmp_path / "tfds", **options)


def test_loads_every_row_with_raw_ids_mapped(tmp_path):
    table = files.log_table()
    log, schema = files.write(tmp_path, table)
    dataset = load(log, schema, tmp_path)
    interactions = dataset.interactions
    assert interactions.num_exposures == table.num_rows
    assert dataset.spec.action_names == ("like", "love")
    # the actions survive: per raw (user, item, time) the same 0/1 values
    vocabulary = dataset.vocabulary
    raw_items = np.asarray(table["movie"])
    mapped = vocabulary.items.lookup(raw_items)
    expected = sorted(zip(vocabulary.users.lookup(table["viewer"].to_pylist()).tolist(), mapped.tolist(),
                          np.asarray(table["ts_ms"]).tolist(), np.asarray(table["liked"]).tolist()))
    got = sorted(zip(interactions.model_users(interactions.user_ids).tolist(), interactions.item_ids.tolist(),
                     np.round(interactions.timestamps * 1000).astype(np.int64).tolist(),
                     interactions.actions[:, 0].tolist()))
    assert got == expected
    assert dataset.spec.side_vocab_sizes == (6,)  # five genres and "missing"


def test_vocabulary_comes_from_train_only_and_new_ids_hash_into_buckets(tmp_path):
    table = files.log_table(seed=1)
    # an item that first appears after the cutoff: never in the vocabulary, never an error
    late = np.asarray(table["ts_ms"]) > np.quantile(np.asarray(table["ts_ms"]), 0.95)
    movies = np.asarray(table["movie"]).copy()
    movies[late] = 999_999
    log, schema = files.write(tmp_path, files.replace_column(table, "movie", movies))
    dataset = load(log, schema, tmp_path, train_fraction=0.8)
    items = dataset.vocabulary.items
    assert 999_999 not in items.keys
    train_rows = np.repeat(np.isin(np.arange(dataset.interactions.num_requests), dataset.train_requests),
                           np.diff(dataset.interactions.request_starts))
    assert (dataset.interactions.item_ids[train_rows] < items.num_known).all()
    bucket = items.lookup([999_999])[0]
    assert items.num_known <= bucket < items.size
    assert dataset.spec.num_items == items.num_known + 1024  # the default oov_buckets
    assert (dataset.interactions.item_ids[~train_rows] == bucket).sum() >= late.sum()


def test_min_count_sends_rare_train_ids_to_buckets(tmp_path):
    log, schema = files.write(tmp_path, schema=files.SCHEMA + "\n[options]\nmin_count = 20\noov_buckets = 7\n")
    dataset = load(log, schema, tmp_path)
    items = dataset.vocabulary.items
    train_keys = keys_of(np.asarray(files.log_table()["movie"]))
    assert items.oov_buckets == 7 and dataset.spec.num_items == items.num_known + 7
    counts = dict(zip(*np.unique(train_keys, return_counts=True)))
    assert all(counts[k] >= 20 for k in items.keys)


def test_keys_agree_between_ints_and_their_strings():
    assert string_key("123") == 123 and string_key("-5") == -5
    assert string_key("0123") != 123 and string_key("1_000") != 1000  # not canonical: hashed
    assert string_key("viewer-1") == string_key("viewer-1") != string_key("viewer-2")
    vocabulary = IdVocabulary(keys=np.array([5, 123], np.int64), oov_buckets=3)
    np.testing.assert_array_equal(vocabulary.lookup(["123", 5, 123]), [1, 0, 1])
    unknown = vocabulary.lookup(np.arange(1000, 1100))
    assert ((unknown >= 2) & (unknown < 5)).all() and len(set(unknown.tolist())) == 3


def test_csv_and_parquet_give_the_same_dataset(tmp_path):
    table = files.log_table(seed=2)
    parquet = load(*files.write(tmp_path / "p", table), tmp_path)
    for fmt in ("csv", "tsv"):
        other = load(*files.write(tmp_path / fmt, table, fmt=fmt), tmp_path)
        np.testing.assert_array_equal(other.interactions.item_ids, parquet.interactions.item_ids)
        np.testing.assert_array_equal(other.interactions.actions, parquet.interactions.actions)
        np.testing.assert_array_equal(other.interactions.request_starts, parquet.interactions.request_starts)
        assert other.vocabulary.digest() != "" and other.spec == parquet.spec


def test_request_column_cuts_requests(tmp_path):
    table = files.log_table(rows=500, seed=3)
    request = (np.asarray(table["ts_ms"]) // 3_600_000).astype(np.int64)  # one request per user-hour
    table = table.append_column("req", pa.array(request))
    schema = files.SCHEMA.replace('time_unit = "ms"', 'time_unit = "ms"\nrequest = "req"')
    dataset = load(*files.write(tmp_path, table, schema=schema), tmp_path)
    starts = dataset.interactions.request_starts
    hours = dataset.interactions.extras["request"]
    for r in range(dataset.interactions.num_requests):
        assert len(set(hours[starts[r]:starts[r + 1]].tolist())) == 1


def test_item_table_and_content(tmp_path):
    table = files.log_table(seed=4).drop_columns(["genre"])
    movies = np.unique(np.asarray(table["movie"]))
    rng = np.random.default_rng(4)
    content = rng.normal(size=(len(movies), 6)).astype(np.float32)
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"movie": movies, "studio": [f"s{m % 3}" for m in movies],
                             "emb": pa.array(list(content), pa.list_(pa.float32()))}), tmp_path / "items.parquet")
    schema = files.SCHEMA.replace('[item_features]\ngenre = "genre"',
                                  '[item_table]\npath = "items.parquet"\nitem = "movie"\n'
                                  '[item_features]\nstudio = "studio"\n[content]\ncolumn = "emb"')
    dataset = load(*files.write(tmp_path, table, schema=schema), tmp_path)
    items = dataset.vocabulary.items
    rows = items.lookup(movies)
    known = rows < items.num_known
    np.testing.assert_array_equal(dataset.catalog.content[rows[known]], content[known])
    assert dataset.spec.content_dim == 6 and dataset.spec.side_vocab_sizes == (4,)
    np.testing.assert_array_equal(dataset.catalog.side_features[rows[known], 0],
                                  dataset.vocabulary.item_features["studio"].lookup(
                                      [f"s{m % 3}" for m in movies[known]]))


def test_prepared_once_and_again_when_file_or_schema_changes(tmp_path):
    log, schema = files.write(tmp_path)
    first = prepare_log(log, schema, tfds_dir=tmp_path / "tfds")
    again = prepare_log(log, schema, tfds_dir=tmp_path / "tfds")
    assert again.data_dir == first.data_dir
    schema.write_text(files.SCHEMA.replace('love = "loved"\n', ""))
    assert prepare_log(log, schema, tfds_dir=tmp_path / "tfds").data_dir != first.data_dir
    files.write(tmp_path, files.log_table(seed=9))
    schema.write_text(files.SCHEMA)
    assert prepare_log(log, schema, tfds_dir=tmp_path / "tfds").data_dir != first.data_dir
    # options applied at load time do not prepare again
    schema.write_text(files.SCHEMA + "\n[options]\nmin_count = 3\n")
    assert len(list((tmp_path / "tfds").iterdir())) == 3
    prepare_log(log, schema, tfds_dir=tmp_path / "tfds")
    assert len(list((tmp_path / "tfds").iterdir())) == 3


def test_interrupted_prepare_is_not_taken_for_finished(tmp_path, monkeypatch):
    from genrank_jax.data.own_log import builder as builder_module

    log, schema = files.write(tmp_path)
    original, calls = builder_module.user_record, []

    def dies_midway(*args, **kwargs):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(builder_module, "user_record", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        prepare_log(log, schema, tfds_dir=tmp_path / "tfds")
    monkeypatch.setattr(builder_module, "user_record", original)
    records = read_records(prepare_log(log, schema, tfds_dir=tmp_path / "tfds"))
    assert len(records["item_keys"]) == files.log_table().num_rows


def test_duplicates_counted_and_dropped(tmp_path):
    table = files.log_table(rows=400, seed=5)
    doubled = pa.concat_tables([table, table.slice(0, 25)])
    log, schema = files.write(tmp_path, doubled)
    kept = load(log, schema, tmp_path)
    assert kept.info["duplicate_rows"] == 25 and kept.interactions.num_exposures == 425
    dropped = load(log, schema, tmp_path, drop_duplicates=True)
    assert dropped.info["duplicate_rows"] == 25 and dropped.interactions.num_exposures == 400


def test_vocabulary_saves_and_loads(tmp_path):
    dataset = load(*files.write(tmp_path), tmp_path)
    path = dataset.vocabulary.save(tmp_path / "v.npz")
    again = Vocabulary.load(path)
    assert again.digest() == dataset.vocabulary.digest()
    raw = files.log_table()["viewer"].to_pylist()[:50]
    np.testing.assert_array_equal(again.users.lookup(raw), dataset.vocabulary.users.lookup(raw))


def test_beam_direct_runner_equals_single_process(tmp_path):
    table = files.log_table(rows=1500, seed=6)
    folder = tmp_path / "parts"
    files.write(folder, table.slice(0, 700), name="part-0")
    files.write(folder, table.slice(700), name="part-1")
    (folder / "schema.toml").rename(tmp_path / "schema.toml")
    schema = tmp_path / "schema.toml"
    single = read_records(prepare_log(folder, schema, tfds_dir=tmp_path / "a"))
    beam = read_records(prepare_log(folder, schema, tfds_dir=tmp_path / "b", beam_runner="DirectRunner"))
    for key, value in single.items():
        if value is not None:
            np.testing.assert_array_equal(beam[key], value, err_msg=key)


def test_second_load_maps_the_saved_arrays(tmp_path, monkeypatch):
    from genrank_jax.data.own_log import loading

    log, schema = files.write(tmp_path)
    first = load(log, schema, tmp_path)
    built = []
    monkeypatch.setattr(loading, "_build_dataset", lambda *a, **k: built.append(1))
    second = load(log, schema, tmp_path)
    assert built == [] and isinstance(second.interactions.item_ids, np.memmap)
    np.testing.assert_array_equal(second.interactions.item_ids, first.interactions.item_ids)
    np.testing.assert_array_equal(second.eval_requests, first.eval_requests)
    assert second.vocabulary.digest() == first.vocabulary.digest()
    with pytest.raises(AttributeError):  # other options build again (and the stub returns nothing to save)
        load(log, schema, tmp_path, train_fraction=0.7)
    assert built == [1]


def test_a_crash_while_saving_leaves_no_finished_folder(tmp_path, monkeypatch):
    from genrank_jax.data.own_log import memory_mapped

    log, schema = files.write(tmp_path)
    original = np.save
    monkeypatch.setattr(memory_mapped.np, "save", lambda path, array: (_ for _ in ()).throw(OSError("disk full"))
                        if "actions" in str(path) else original(path, array))
    with pytest.raises(OSError, match="disk full"):
        load(log, schema, tmp_path)
    assert not list((tmp_path / "tfds").glob("*/loaded-*"))
    monkeypatch.setattr(memory_mapped.np, "save", original)
    assert load(log, schema, tmp_path).interactions.num_exposures == files.log_table().num_rows


def test_content_from_npy_with_raw_id_list(tmp_path):
    table = files.log_table(seed=7)
    movies = np.unique(np.asarray(table["movie"]))
    content = np.random.default_rng(7).normal(size=(len(movies), 3)).astype(np.float32)
    np.save(tmp_path / "content.npy", content)
    (tmp_path / "content_ids.txt").write_text("\n".join(str(m) for m in movies) + "\n")
    schema = files.SCHEMA + '\n[content]\nnpy = "content.npy"\nids = "content_ids.txt"\n'
    dataset = load(*files.write(tmp_path, table, schema=schema), tmp_path)
    rows = dataset.vocabulary.items.lookup(movies)
    known = rows < dataset.vocabulary.items.num_known
    np.testing.assert_array_equal(dataset.catalog.content[rows[known]], content[known])
    assert not dataset.catalog.content[dataset.vocabulary.items.num_known:].any()  # OOV rows: zeros


def test_lis_on_a_log(tmp_path, monkeypatch, capsys):
    from genrank_jax.cli import main

    monkeypatch.setenv("GENRANK_TFDS_DIR", str(tmp_path / "tfds"))
    log, schema = files.write(tmp_path)
    assert main(["lis", "--data", f"log:{log}", "--schema", str(schema), "--seeds", "2", "--leaks", "next_item",
                 "--horizon", "7d", "--out", str(tmp_path / "lis")]) == 0
    assert "| next_item@7d | leak |" in (tmp_path / "lis" / "lis.md").read_text()


def test_records_stream_into_several_shards(tmp_path, monkeypatch):
    from genrank_jax.data.own_log import builder as builder_module

    log, schema = files.write(tmp_path)
    one = read_records(prepare_log(log, schema, tfds_dir=tmp_path / "one"))
    monkeypatch.setattr(builder_module, "ROWS_PER_SHARD", 700)
    sharded = prepare_log(log, schema, tfds_dir=tmp_path / "many")
    assert len(sharded.info.splits["train"].shard_lengths) == 5
    many = read_records(sharded)
    for key, value in one.items():
        if value is not None:
            np.testing.assert_array_equal(many[key], value, err_msg=key)


def test_preparing_says_what_it_does_and_downloads_nothing(tmp_path, capsys):
    log, schema = files.write(tmp_path)
    prepare_log(log, schema, tfds_dir=tmp_path / "tfds")
    out = capsys.readouterr().out
    assert "Downloading" not in out and "downloaded" not in out
    assert out.count("preparing genrank_own_log from local files into") == 1
    prepare_log(log, schema, tfds_dir=tmp_path / "tfds")
    assert capsys.readouterr().out == ""  # the second time it is reused, silently
