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
