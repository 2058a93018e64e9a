"""`write_log` / `genrank-jax simulate`: the simulator's feed as a Parquet log that loads back the same."""

from __future__ import annotations

import tomllib

import numpy as np
import pyarrow.parquet as pq

from genrank_jax.cli import main
from genrank_jax.data import load_dataset
from genrank_jax.data.own_log import write_log
from genrank_jax.data.own_log.writer import raw_user_ids
from genrank_jax.data.synthetic import SimulatorConfig, simulate


def test_written_log_loads_back_the_same_log(tmp_path):
    dataset = simulate(SimulatorConfig.preset("tests", seed=3)).dataset
    path = write_log(dataset, tmp_path / "feed")
    table = pq.read_table(path)
    assert table.schema.field("viewer").type == "string" and table.schema.field("item_id").type == "int64"
    times = table["ts_ms"].to_numpy()
    assert (np.diff(times) >= 0).all()  # a log is appended in time order
    schema = tomllib.loads((tmp_path / "feed" / "schema.toml").read_text())
    assert set(schema["actions"].values()) <= set(table.column_names)
    loaded = load_dataset(f"log:{path}", schema=tmp_path / "feed" / "schema.toml", tfds_dir=tmp_path / "tfds",
                          train_fraction=0.8)
    original, again = dataset.interactions, loaded.interactions
    np.testing.assert_array_equal(np.sort(np.diff(again.request_starts)), np.sort(np.diff(original.request_starts)))
    # users come in another order (by raw-id key) and a request's rows by item rather than display
    # position: compare the rows sorted by (user, time, item, actions), ids mapped by the vocabulary
    def sorted_rows(log, users, items):
        times = np.round(log.timestamps * 1000).astype(np.int64)
        order = np.lexsort((*log.actions.T[::-1], items, times, users))
        return np.stack([users[order], times[order], items[order]], 1), log.actions[order]

    vocabulary = loaded.vocabulary
    want = sorted_rows(original, vocabulary.users.lookup(raw_user_ids(original.user_ids)),
                       vocabulary.items.lookup(100_000 + original.item_ids))
    got = sorted_rows(again, again.model_users(again.user_ids), again.item_ids)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    # the item table's attributes and content reach the catalog under the vocabulary's ids
    items = loaded.vocabulary.items
    raw = 100_000 + np.arange(dataset.spec.num_items)
    rows, known = items.lookup(raw), items.is_known(raw)
    np.testing.assert_array_equal(loaded.catalog.content[rows[known]], dataset.catalog.content[known])
    assert loaded.spec.side_vocab_sizes[0] == len(np.unique(dataset.catalog.side_features[:, 0])) + 1  # + missing


def test_simulate_command_refuses_an_occupied_folder(tmp_path, capsys):
    out = tmp_path / "feed"
    assert main(["simulate", "--preset", "tests", "--out", str(out)]) == 0
    first = (out / "log.parquet").read_bytes()
    assert main(["simulate", "--preset", "tests", "--seed", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds files" in err[0] and "--overwrite" in err[0]
    assert (out / "log.parquet").read_bytes() == first
    assert main(["simulate", "--preset", "tests", "--seed", "1", "--out", str(out), "--overwrite"]) == 0
    assert (out / "log.parquet").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feed"]  # nothing partial left beside it


def test_written_files_hold_every_value_with_its_type(tmp_path):
    """The Parquet files read back with pyarrow alone (not through the loader) hold the dataset's
    arrays value for value, in time order, with the types the schema file promises."""
    import pyarrow as pa

    seed = 417  # fixed: a failure reproduces
    print(f"simulator seed {seed}")  # shown by pytest on a failure
    dataset = simulate(SimulatorConfig.preset("tests", seed=seed)).dataset
    folder = tmp_path / "feed"
    path = write_log(dataset, folder, row_group_rows=7_001)  # several row groups, the last one short
    log, spec = dataset.interactions, dataset.spec
    parquet = pq.ParquetFile(path)
    assert parquet.metadata.num_row_groups == -(-log.num_exposures // 7_001)
    table = parquet.read()
    types = {name: table.schema.field(name).type for name in table.column_names}
    assert types["viewer"] == pa.string() and types["item_id"] == pa.int64() and types["ts_ms"] == pa.int64()
    assert all(types[name] == pa.uint8() for name in spec.action_names)
    assert set(log.extras) <= set(types) and "position" in log.extras  # the simulator's display position
    # rows in time order, then by user, as a log is appended
    order = np.lexsort((log.user_ids, log.timestamps))
    np.testing.assert_array_equal(table["viewer"].to_numpy(zero_copy_only=False), raw_user_ids(log.user_ids[order]))
    np.testing.assert_array_equal(table["item_id"].to_numpy(), 100_000 + log.item_ids[order].astype(np.int64))
    np.testing.assert_array_equal(table["ts_ms"].to_numpy(), np.round(log.timestamps[order] * 1000).astype(np.int64))
    for a, name in enumerate(spec.action_names):
        np.testing.assert_array_equal(table[name].to_numpy(), log.actions[order, a])
    for name, column in log.extras.items():
        np.testing.assert_array_equal(table[name].to_numpy(), column[order])
    requests = table["request_id"].to_numpy()
    np.testing.assert_array_equal(np.bincount(requests), np.diff(log.request_starts))  # one id per request
    # the item table: one row per item, raw ids, int32 side features, float32 content
    items = pq.read_table(folder / "items.parquet")
    side_names = list(dataset.info["side_features"])
    assert items.column_names == ["item_id", *side_names, "content"]
    assert all(items.schema.field(name).type == pa.int32() for name in side_names)
    assert items.schema.field("content").type == pa.list_(pa.float32())
    np.testing.assert_array_equal(items["item_id"].to_numpy(), 100_000 + np.arange(spec.num_items))
    for f, name in enumerate(side_names):
        np.testing.assert_array_equal(items[name].to_numpy(), dataset.catalog.side_features[:, f])
    np.testing.assert_array_equal(np.stack(items["content"].to_numpy(zero_copy_only=False)), dataset.catalog.content)
    # the schema names columns that exist, of the right table
    schema = tomllib.loads((folder / "schema.toml").read_text())
    assert {schema["columns"][key] for key in ("user", "item", "time", "request")} <= set(table.column_names)
    assert schema["columns"]["time_unit"] == "ms" and schema["actions"] == {n: n for n in spec.action_names}
    assert (folder / schema["item_table"]["path"]).exists() and schema["item_table"]["item"] == "item_id"
    assert set(schema["item_features"].values()) | {schema["content"]["column"]} <= set(items.column_names)


def test_simulate_command_names_its_folder_then_what_it_wrote(tmp_path, capsys):
    out = tmp_path / "feed"
    assert main(["simulate", "--preset", "tests", "--seed", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    dataset = simulate(SimulatorConfig.preset("tests", seed=2)).dataset
    assert len(printed) == 2 and printed[0] == f"output folder: {out}"
    assert f"{dataset.interactions.num_exposures:,} exposures" in printed[1]
    assert all(str(out / name) in printed[1] for name in ("log.parquet", "items.parquet", "schema.toml"))
    assert sorted(p.name for p in out.iterdir()) == ["items.parquet", "log.parquet", "schema.toml"]
