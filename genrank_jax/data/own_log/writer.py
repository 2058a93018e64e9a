"""A RankingDataset written as a feed team's log would look: the input of `log:PATH`.

`write_log(dataset, folder)` writes `log.parquet` (one row per exposure, in time order), an item
table `items.parquet` (side features and content embeddings) and `schema.toml`, with raw ids that
are not dense: users are strings (`u000042`), items are int64 (100_000 + id). Loaded back with
`load_dataset("log:folder/log.parquet", schema="folder/schema.toml")` it regroups into the same
requests through its `request_id` column (`genrank-jax simulate` writes the simulator's feed this
way; tests check the round trip).
"""

from __future__ import annotations

import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genrank_jax.data.schema import RankingDataset

ITEM_OFFSET = 100_000


def raw_user_ids(users: np.ndarray) -> list[str]:
    return [f"u{u:06d}" for u in np.asarray(users).tolist()]


def raw_item_ids(items: np.ndarray) -> np.ndarray:
    return np.asarray(items, np.int64) + ITEM_OFFSET


def write_log(dataset: RankingDataset, folder: str | pathlib.Path, *, row_group_rows: int = 1_000_000) -> pathlib.Path:
    """Write the log, the item table and the schema into `folder` (created); returns the log path."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    log, spec = dataset.interactions, dataset.spec
    order = np.lexsort((log.user_ids, log.timestamps))  # time order, as a log is appended
    users = log.model_users(log.user_ids)[order]
    columns = {"viewer": pa.array(raw_user_ids(users)), "item_id": pa.array(raw_item_ids(log.item_ids[order])),
               "ts_ms": pa.array(np.round(log.timestamps[order] * 1000).astype(np.int64)),
               # the simulator's requests of one session can be under a millisecond apart
               "request_id": pa.array(np.repeat(np.arange(log.num_requests), np.diff(log.request_starts))[order])}
    for a, name in enumerate(spec.action_names):
        columns[name] = pa.array(log.actions[order, a].astype(np.uint8))
    for name, column in log.extras.items():
        columns[name] = pa.array(np.asarray(column)[order])
    path = folder / "log.parquet"
    pq.write_table(pa.table(columns), path, row_group_size=row_group_rows)

    side_names = list(dataset.info.get("side_features") or [f"side_{f}" for f in range(len(spec.side_vocab_sizes))])
    items = np.arange(spec.num_items)
    table = {"item_id": pa.array(raw_item_ids(items))}
    for f, name in enumerate(side_names):
        table[name] = pa.array(dataset.catalog.side_features[:, f].astype(np.int32))
    if dataset.catalog.content is not None:
        table["content"] = pa.array(list(dataset.catalog.content.astype(np.float32)), pa.list_(pa.float32()))
    pq.write_table(pa.table(table), folder / "items.parquet")

    lines = ["# written by genrank_jax.data.own_log.write_log", "[columns]", 'user = "viewer"', 'item = "item_id"',
             'time = "ts_ms"', 'time_unit = "ms"', 'request = "request_id"', "", "[actions]"]
    lines += [f'{name} = "{name}"' for name in spec.action_names]
    lines += ["", "[item_table]", 'path = "items.parquet"', 'item = "item_id"']
    if side_names:
        lines += ["", "[item_features]"] + [f'{name} = "{name}"' for name in side_names]
    if dataset.catalog.content is not None:
        lines += ["", "[content]", 'column = "content"']
    (folder / "schema.toml").write_text("\n".join(lines) + "\n")
    return path
