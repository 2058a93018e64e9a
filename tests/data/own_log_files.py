"""A small exposure log in a user's own columns, written as Parquet or CSV, with its schema file.

Users have string ids ("viewer-17"), items int64 ids far from dense (10_000 + 7 * i), times in
milliseconds over 20 days; two actions, one item feature in the log. Every draw is seeded.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

START_MS = 1_700_000_000_000
SCHEMA = """
[columns]
user = "viewer"
item = "movie"
time = "ts_ms"
time_unit = "ms"

[actions]
like = "liked"
love = "loved"

[item_features]
genre = "genre"
"""


def log_table(rows: int = 3000, users: int = 60, items: int = 80, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, rows)
    item = rng.zipf(1.6, rows) % items
    # requests: a user's exposures in bursts of a few seconds, bursts hours apart
    burst = np.sort(rng.integers(0, 20 * 24, rows)) * 3_600_000
    times = START_MS + burst + rng.integers(0, 5_000, rows)
    return pa.table({
        "viewer": pa.array([f"viewer-{u}" for u in user]),
        "movie": pa.array(10_000 + 7 * item, pa.int64()),
        "ts_ms": pa.array(times, pa.int64()),
        "liked": pa.array((rng.random(rows) < 0.3).astype(np.uint8)),
        "loved": pa.array(rng.random(rows) < 0.1),
        "genre": pa.array([f"g{i % 5}" for i in item]),
        "ignored": pa.array(rng.random(rows)),  # a column the schema does not name
    })


def write(folder: pathlib.Path, table: pa.Table | None = None, *, fmt: str = "parquet", schema: str = SCHEMA,
          name: str = "log") -> tuple[pathlib.Path, pathlib.Path]:
    """(log path, schema path) of `table` written into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    table = log_table() if table is None else table
    if fmt == "parquet":
        path = folder / f"{name}.parquet"
        pq.write_table(table, path, row_group_size=1000)
    else:
        path = folder / f"{name}.{fmt}"
        pcsv.write_csv(table, path, pcsv.WriteOptions(delimiter="\t" if fmt == "tsv" else ","))
    schema_path = folder / "schema.toml"
    schema_path.write_text(schema)
    return path, schema_path


def replace_column(table: pa.Table, name: str, values) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, pa.array(values))
