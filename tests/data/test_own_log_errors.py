"""Bad input to a user's own log: one clear error naming the file, column and row; nothing half-prepared."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from genrank_jax.cli import main
from genrank_jax.data import DataError, MalformedRowError, load_dataset
from genrank_jax.data.own_log import SchemaError
from tests.data import own_log_files as files


def load(log, schema, tmp_path, **options):
    return load_dataset(f"log:{log}", schema=schema, tfds_dir=tmp_path / "tfds", **options)


def prepared_folders(tmp_path):
    """Finished prepared datasets under tmp_path/tfds (TFDS renames a folder in when it is done)."""
    return [p for p in (tmp_path / "tfds").rglob("dataset_info.json")] if (tmp_path / "tfds").exists() else []


@pytest.mark.parametrize("schema_text, message", [
    (files.SCHEMA.replace('item = "movie"\n', ""), "columns.item is missing"),
    (files.SCHEMA.replace('time_unit = "ms"', 'time_unit = "days"'), "time_unit must be one of"),
    (files.SCHEMA.replace('time_unit = "ms"', 'time_unit = "ms"\ntimezone = "UTC"'), "unknown key columns.timezone"),
    (files.SCHEMA + "\n[colums]\n", "unknown table or key 'colums'"),
    (files.SCHEMA.replace('item = "movie"', 'item = "viewer"'), "column 'viewer' is named twice"),
    (files.SCHEMA.replace('love = "loved"', 'love = "liked"'), "column 'liked' is named twice"),
    (files.SCHEMA + "\n[options]\noov_buckets = 0\n", "oov_buckets must be >= 1"),
    (files.SCHEMA.replace('item = "movie"', "item = 3"), "columns.item must be a string"),
    ("[columns\n", "not valid TOML"),
])
def test_schema_errors_name_the_key(tmp_path, schema_text, message):
    log, schema = files.write(tmp_path, schema=schema_text)
    with pytest.raises(SchemaError, match=message) as error:
        load(log, schema, tmp_path)
    assert str(schema) in str(error.value)


def bad_cell(table, column, row, value, type_=None):
    values = table[column].to_pylist()
    values[row] = value
    return table.set_column(table.schema.get_field_index(column), column, pa.array(values, type_))


@pytest.mark.parametrize("column, value, type_, reason", [
    ("liked", 2, pa.int64(), "action value is not 0 or 1"),
    ("liked", float("nan"), pa.float64(), "action value is not 0 or 1"),
    ("viewer", None, pa.string(), "null user id"),
    ("movie", None, pa.int64(), "null item id"),
    ("ts_ms", None, pa.int64(), "time is null"),
])
def test_bad_row_names_file_column_and_row_and_can_be_skipped(tmp_path, column, value, type_, reason):
    table = bad_cell(files.log_table(), column, 1234, value, type_)
    log, schema = files.write(tmp_path, table)
    with pytest.raises(MalformedRowError, match=reason) as error:
        load(log, schema, tmp_path)
    assert str(log) in str(error.value) and f"column '{column}'" in str(error.value)
    assert "row 1,235 (row group 1)" in str(error.value)
    assert prepared_folders(tmp_path) == []
    dataset = load(log, schema, tmp_path, skip_bad_rows=True)
    assert dataset.interactions.num_exposures == table.num_rows - 1
    assert dataset.info["bad_rows"] == {log.name: 1}


def test_unparsable_iso_time_names_the_row(tmp_path):
    table = files.log_table(rows=300)
    iso = [np.datetime_as_string(np.datetime64(int(t), "ms"), unit="s") for t in table["ts_ms"].to_pylist()]
    iso[17] = "yesterday"
    table = table.set_column(table.schema.get_field_index("ts_ms"), "ts_ms", pa.array(iso))
    log, schema = files.write(tmp_path, table, schema=files.SCHEMA.replace('time_unit = "ms"', 'time_unit = "iso"'))
    with pytest.raises(MalformedRowError, match=r"column 'ts_ms', row 18 .*ISO 8601.*yesterday"):
        load(log, schema, tmp_path)
    dataset = load(log, schema, tmp_path, skip_bad_rows=True)
    assert dataset.interactions.num_exposures == 299
    times = np.sort(dataset.interactions.timestamps)
    expected = np.sort(np.delete(np.asarray(files.log_table(rows=300)["ts_ms"]) // 1000, 17))
    np.testing.assert_array_equal(times, expected)


def test_missing_column_lists_the_files_columns(tmp_path):
    log, schema = files.write(tmp_path, files.log_table().drop_columns(["loved"]))
    with pytest.raises(DataError, match=r"no column 'loved' \(named by actions.love in the schema\).*'liked'"):
        load(log, schema, tmp_path)


def test_wrong_type(tmp_path):
    table = files.log_table().set_column(3, "liked", pa.array(["yes"] * 3000))
    log, schema = files.write(tmp_path, table)
    with pytest.raises(DataError, match=r"column 'liked' \(actions.like\) has type string"):
        load(log, schema, tmp_path)


def test_doubled_csv_header(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("viewer,movie,ts_ms,liked,liked,loved,genre\nv1,1,1700000000000,1,0,0,g\n")
    (tmp_path / "schema.toml").write_text(files.SCHEMA)
    with pytest.raises(DataError, match="column 'liked' appears 2 times"):
        load(log, tmp_path / "schema.toml", tmp_path)


def test_empty_file(tmp_path):
    log, schema = files.write(tmp_path, files.log_table().slice(0, 0))
    with pytest.raises(DataError, match="has no rows"):
        load(log, schema, tmp_path)
    csv = tmp_path / "empty.csv"
    csv.write_text("")
    with pytest.raises(DataError, match="empty"):
        load(csv, schema, tmp_path)


def test_time_unit_that_puts_every_date_in_1970(tmp_path):
    log, schema = files.write(tmp_path, schema=files.SCHEMA.replace('time_unit = "ms"', 'time_unit = "us"'))
    with pytest.raises(DataError, match=r"column 'ts_ms' read with time_unit = 'us' puts every date .* in 1970"):
        load(log, schema, tmp_path)
    log, schema = files.write(tmp_path, schema=files.SCHEMA.replace('time_unit = "ms"', 'time_unit = "s"'))
    with pytest.raises(DataError, match="after 2200"):
        load(log, schema, tmp_path)


def test_item_table_that_matches_few_items_is_refused(tmp_path):
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"movie": np.arange(5, dtype=np.int64), "studio": ["a"] * 5}), tmp_path / "items.parquet")
    schema = files.SCHEMA.replace('[item_features]\ngenre = "genre"',
                                  '[item_table]\npath = "items.parquet"\nitem = "movie"\n'
                                  '[item_features]\nstudio = "studio"')
    log, schema_path = files.write(tmp_path, schema=schema)
    with pytest.raises(DataError, match=r"items.parquet: only 0% of the log's items have a row"):
        load(log, schema_path, tmp_path)


def test_cli_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GENRANK_TFDS_DIR", str(tmp_path / "tfds"))
    log, schema = files.write(tmp_path, bad_cell(files.log_table(), "liked", 5, 2, pa.int64()))
    code = main(["train", "--data", f"log:{log}", "--schema", str(schema), "--out", str(tmp_path / "run"),
                 "--steps", "1"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("genrank-jax train: ") and "row 6" in lines[0] and "--skip-bad-rows" in lines[0]
    code = main(["train", "--data", f"log:{log}", "--out", str(tmp_path / "run2"), "--steps", "1"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--schema" in lines[0]


def test_csv_row_with_wrong_field_count(tmp_path):
    log, schema = files.write(tmp_path, files.log_table(rows=50), fmt="csv")
    lines = log.read_text().splitlines()
    lines[10] += ",extra"
    log.write_text("\n".join(lines) + "\n")
    with pytest.raises(MalformedRowError, match="7 fields expected, 8 found"):
        load(log, schema, tmp_path)
    assert load(log, schema, tmp_path, skip_bad_rows=True).interactions.num_exposures == 49


def test_a_corrupt_prepared_cache_names_its_folder_and_the_fix(tmp_path):
    from genrank_jax.data.own_log import prepare_log

    log, schema = files.write(tmp_path)
    builder = prepare_log(log, schema, tfds_dir=tmp_path / "tfds")
    (shard,) = [p for p in builder.data_path.iterdir() if "array_record" in p.name]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # a copy cut short
    with pytest.raises(DataError, match=r"the prepared data in .* is unreadable .* delete that folder"):
        load(log, schema, tmp_path)


def content_files(tmp_path, matrix=None, ids=None):
    """A log whose [content] is an .npy matrix and an .npy id list (defaults: valid, seeded)."""
    table = files.log_table(seed=8)
    movies = np.unique(np.asarray(table["movie"]))
    rng = np.random.default_rng(8)
    np.save(tmp_path / "content.npy", rng.normal(size=(len(movies), 3)) if matrix is None else matrix(len(movies)))
    np.save(tmp_path / "content_ids.npy", movies if ids is None else ids(movies), allow_pickle=True)
    schema = files.SCHEMA + '\n[content]\nnpy = "content.npy"\nids = "content_ids.npy"\n'
    return files.write(tmp_path, table, schema=schema)


@pytest.mark.parametrize("matrix, ids, message", [
    (lambda n: np.full((n, 3), 0.5).astype(np.float64) * np.r_[1.0, 1e39, 1.0], None,
     r"content\.npy: content row 1 holds 5e\+38, outside float32's range"),
    (None, lambda movies: movies.astype(object), r"content_ids\.npy \(content ids\): not a \.npy array"),
    ("text", None, r"content\.npy \(content\): not a \.npy array"),
])
def test_npy_content_that_is_not_float32_numbers_is_named(tmp_path, matrix, ids, message):
    log, schema = content_files(tmp_path, None if matrix == "text" else matrix, ids)
    if matrix == "text":
        (tmp_path / "content.npy").write_text("0.1,0.2,0.3\n")
    with pytest.raises(DataError, match=message):
        load(log, schema, tmp_path)


def test_a_content_column_past_float32_range_is_named(tmp_path):
    import pyarrow.parquet as pq

    table = files.log_table(seed=9).drop_columns(["genre"])
    movies = np.unique(np.asarray(table["movie"]))
    content = np.random.default_rng(9).normal(size=(len(movies), 4))
    content[2, 3] = -7e38
    pq.write_table(pa.table({"movie": movies, "emb": pa.array(list(content), pa.list_(pa.float64()))}),
                   tmp_path / "items.parquet")
    schema = files.SCHEMA.replace('[item_features]\ngenre = "genre"',
                                  '[item_table]\npath = "items.parquet"\nitem = "movie"\n[content]\ncolumn = "emb"')
    with pytest.raises(DataError, match=r"items\.parquet: content row 3 holds -7e\+38, outside float32's range"):
        load(*files.write(tmp_path, table, schema=schema), tmp_path)
