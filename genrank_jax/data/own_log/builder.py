"""The TFDS builder of a user's own log: the shared log builder's records, keyed by raw-id keys.

One record per user, like MovieLens and KuaiRand, with one difference: ids stay int64 *keys*
(vocabulary.py), not dense ids. The dense ids depend on the train split, which is chosen at load
time (changing the cutoff never prepares again), and keys need no global pass over the log, so
the same per-user function runs on one machine (`_generate_examples` below, reading record
batches with bounded Python work) and as an Apache Beam pipeline (`beam_pipeline.py`, through
TFDS's own Beam support) for logs past one machine.

Within a user, rows are ordered by every column (time, request, item, actions, features), so the
record does not depend on the order rows arrive in, and exact duplicates are adjacent: they are
counted, and dropped with `drop_duplicates`.
"""

from __future__ import annotations

import logging
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from genrank_jax.data.builders.log_builder import LogBuilder
from genrank_jax.data.builders.rows import BadRows
from genrank_jax.data.own_log.reader import Chunk, file_format, log_files, read_chunks
from genrank_jax.data.own_log.schema import LogSchema
from genrank_jax.data.own_log.vocabulary import MISSING_KEY

log = logging.getLogger(__name__)
ROWS_PER_SHARD = 10_000_000  # an array_record shard of ~200 MB


def user_record(user: int, chunk: Chunk, drop_duplicates: bool) -> tuple[dict, int]:
    """(record, duplicate rows) of one user's rows, in any order (see the module docstring)."""
    # time, then request (two requests can share a millisecond), then the rest
    keys = [*chunk.item_side.T[::-1], *chunk.actions.T[::-1], chunk.item]
    if chunk.request is not None:
        keys.append(chunk.request)
    order = np.lexsort([*keys, chunk.time_ms])
    rows = chunk.take(order)
    columns = ([rows.time_ms, rows.item, rows.actions, rows.item_side]
               + ([rows.request] if rows.request is not None else []))
    same = np.ones(len(order) - 1, bool)
    for column in columns:
        flat = column.reshape(len(order), -1)
        same &= (flat[1:] == flat[:-1]).all(1)
    duplicates = int(same.sum())
    if drop_duplicates and duplicates:
        rows = rows.take(np.flatnonzero(np.append(True, ~same)))
    # a user feature read from the log: the latest non-null value (attributes change over time)
    user_features = np.full(rows.user_side.shape[1], MISSING_KEY, np.int64)
    for g in range(rows.user_side.shape[1]):
        present = np.flatnonzero(rows.user_side[:, g] != MISSING_KEY)
        if len(present):
            user_features[g] = rows.user_side[present[-1], g]
    record = {
        "user": int(user), "item_ids": rows.item, "timestamp_ms": rows.time_ms, "actions": rows.actions,
        "user_features": user_features, "extras": {"request": rows.request} if rows.request is not None else {},
    }
    if rows.item_side.shape[1]:
        record["item_side"] = rows.item_side
    return record, duplicates


def concatenate(chunks, total: int | None = None) -> Chunk:
    """One Chunk of `chunks` (an iterable). With `total` (an upper bound on the rows, e.g. a
    Parquet footer's count), rows are copied into arrays allocated once, so the log is held once,
    not twice, while it is joined: at 10^8 rows that is the difference between 2.6 and 5.2 GB."""
    if total is None:
        chunks = list(chunks)
        first = chunks[0]
        return Chunk(**{name: None if getattr(first, name) is None
                        else np.concatenate([getattr(c, name) for c in chunks])
                        for name in _CHUNK_FIELDS})
    out, filled = None, 0
    for chunk in chunks:
        if out is None:
            out = {name: None if getattr(chunk, name) is None else
                   np.empty((total, *getattr(chunk, name).shape[1:]), getattr(chunk, name).dtype)
                   for name in _CHUNK_FIELDS}
        for name, array in out.items():
            if array is not None:
                array[filled:filled + len(chunk)] = getattr(chunk, name)
        filled += len(chunk)
    return Chunk(**{name: None if array is None else array[:filled] for name, array in out.items()})


_CHUNK_FIELDS = ("user", "item", "time_ms", "actions", "request", "item_side", "user_side")


def parquet_rows(files: list[pathlib.Path]) -> int | None:
    """Rows of a Parquet log from the files' footers (None for CSV: unknown until read)."""
    import pyarrow.parquet as pq

    if any(file_format(f) != "parquet" for f in files):
        return None
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


class GenrankOwnLog(LogBuilder, skip_registration=True):
    """A user's exposure log described by a schema file (see genrank_jax/data/own_log/)."""

    VERSION = tfds.core.Version("1.0.0")
    DEFAULT_REQUEST_GAP_SECONDS = 1800.0

    def __init__(self, *, schema: LogSchema, log_path: str | pathlib.Path, beam: bool = False, **kwargs):
        self.schema = schema
        self._beam = beam
        self.log_path = pathlib.Path(log_path).expanduser()
        super().__init__(manual_dir=self.log_path if self.log_path.is_dir() else self.log_path.parent, **kwargs)

    @classmethod
    def input_files(cls, config_name: str, manual_dir: pathlib.Path) -> list[pathlib.Path]:
        return log_files(manual_dir)

    def _info(self) -> tfds.core.DatasetInfo:
        schema = self.schema
        per_exposure = lambda dtype, *rest: tfds.features.Tensor(shape=(None, *rest), dtype=dtype)
        extras = {"request": per_exposure(np.int64)} if schema.request else {}
        features = {
            "user": np.int64,
            "item_ids": per_exposure(np.int64),
            "timestamp_ms": per_exposure(np.int64),
            "actions": per_exposure(np.uint8, len(schema.actions)),
            "user_features": tfds.features.Tensor(shape=(len(schema.log_user_features),), dtype=np.int64),
            "extras": tfds.features.FeaturesDict(extras),
        }
        if schema.log_item_features:  # TFDS cannot parse a ragged [None, 0] tensor back
            features["item_side"] = per_exposure(np.int64, len(schema.log_item_features))
        features = tfds.features.FeaturesDict(features)
        return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=features,
                                     metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
        if self._beam:  # TFDS runs a returned PTransform in its Beam pipeline (DownloadConfig.beam_runner)
            from genrank_jax.data.own_log.beam_pipeline import ReadLogRecords

            return {"train": ReadLogRecords(log_files(self.log_path), self.schema, skip_bad_rows=self._skip_bad_rows,
                                            drop_duplicates=self._drop_duplicates)}
        return {"train": self._generate_examples()}

    def _user_records(self):
        """(users, rows, iterator of (key, record)) over the log's users in key order."""
        bad = BadRows(skip=self._skip_bad_rows)
        files = log_files(self.log_path)
        rows = concatenate(read_chunks(files, self.schema, bad), total=parquet_rows(files))
        bad.summarize()
        order = np.argsort(rows.user, kind="stable")
        sorted_users = rows.user[order]
        bounds = np.flatnonzero(sorted_users[1:] != sorted_users[:-1]) + 1
        del sorted_users
        counts = {"duplicates": 0}

        def records():
            for part in np.split(order, bounds):
                record, found = user_record(rows.user[part[0]], rows.take(part), self._drop_duplicates)
                counts["duplicates"] += found
                yield record["user"], record
            if counts["duplicates"]:
                log.warning("%d exact duplicate rows in the log %s: %s", counts["duplicates"], self.log_path,
                            "dropped" if self._drop_duplicates else "kept")
            self.info.metadata.update({
                "format": "own log", "num_rows": int(len(rows)), "num_users": int(len(bounds) + 1),
                "bad_rows": dict(bad.counts), "duplicate_rows": counts["duplicates"],
                "drop_duplicates": bool(self._drop_duplicates), "schema": self.schema.describe(),
            })

        return len(bounds) + 1, len(rows), np.diff(np.concatenate([[0], bounds, [len(rows)]])), records()

    def _generate_examples(self):
        return self._user_records()[3]

    def _download_and_prepare(self, dl_manager, download_config):
        """Stream each user's record straight into array_record shards. TFDS's own writer keeps
        every serialized record in memory and, past 1 GB, spills through TensorFlow's file API,
        which this library does not install; the Beam path keeps TFDS's writer."""
        if self._beam:
            return super()._download_and_prepare(dl_manager, download_config)
        from array_record.python import array_record_module

        users, num_rows, user_rows, records = self._user_records()
        num_shards = int(min(users, max(1, -(-num_rows // ROWS_PER_SHARD))))
        # contiguous users per shard, cut where the cumulative rows cross each shard's share
        shard_of_user = np.minimum(np.cumsum(user_rows) * num_shards // max(num_rows, 1), num_shards - 1)
        shard_of_user = np.maximum.accumulate(shard_of_user)
        template = self._get_filename_template(split_name="train")
        features = self.info.features
        lengths, total_bytes, writer, current = [0] * num_shards, 0, None, -1
        for user_index, (_, record) in enumerate(records):
            shard = int(shard_of_user[user_index])
            if shard != current:
                if writer is not None:
                    writer.close()
                path = template.sharded_filepath(shard_index=shard, num_shards=num_shards)
                writer, current = array_record_module.ArrayRecordWriter(str(path), "group_size:1"), shard
            serialized = features.serialize_example(record)
            writer.write(serialized)
            lengths[shard] += 1
            total_bytes += len(serialized)
        if writer is not None:
            writer.close()
        split = tfds.core.SplitInfo(name="train", shard_lengths=lengths, num_bytes=total_bytes,
                                    filename_template=template)
        self.info.set_splits(tfds.core.SplitDict([split]))
