"""The own-log builder as an Apache Beam pipeline, for logs past one machine (10^10 rows).

TFDS runs the PTransform that `GenrankOwnLog._split_generators` returns inside its own Beam
pipeline (`prepare_log(..., beam_runner=..., beam_options=...)`), so the same builder runs on the
DirectRunner here and on Dataflow, Flink or Spark. Each log file is read by one worker in record
batches (reader.py: a folder of Parquet part files is the unit of parallelism), its rows are cut
per user, grouped by user across files, and each user's record is made by the very function the
single-process build uses (`builder.user_record`), which orders a user's rows by every column: the
records are equal whatever order the rows arrive in (tested). Bad and duplicate rows are counted
in Beam metrics (`genrank_jax.own_log` namespace) instead of the dataset's metadata.

Needs `pip install genrank-jax[beam]`.
"""

from __future__ import annotations

import pathlib

import numpy as np

from genrank_jax.data.builders.rows import BadRows
from genrank_jax.data.own_log.builder import concatenate, user_record
from genrank_jax.data.own_log.reader import read_chunks
from genrank_jax.data.own_log.schema import LogSchema

try:
    import apache_beam as beam
except ImportError as error:  # an optional extra: say how to get it
    from genrank_jax.errors import GenRankError

    raise GenRankError("preparing a log with Apache Beam needs the beam extra: "
                       "pip install 'genrank-jax[beam]'") from error

METRICS = "genrank_jax.own_log"


def user_parts(path: str, schema: LogSchema, skip_bad_rows: bool):
    """(user key, Chunk of that user's rows) for every user of every record batch of one file."""
    bad = BadRows(skip=skip_bad_rows)
    for chunk in read_chunks([pathlib.Path(path)], schema, bad):
        order = np.argsort(chunk.user, kind="stable")
        bounds = np.flatnonzero(np.diff(chunk.user[order])) + 1
        for rows in np.split(order, bounds):
            yield int(chunk.user[rows[0]]), chunk.take(rows)
    beam.metrics.Metrics.counter(METRICS, "bad_rows").inc(sum(bad.counts.values()))


def user_example(element, drop_duplicates: bool):
    user, parts = element
    record, duplicates = user_record(user, concatenate(parts), drop_duplicates)
    beam.metrics.Metrics.counter(METRICS, "duplicate_rows").inc(duplicates)
    return user, record


class ReadLogRecords(beam.PTransform):
    """PBegin -> (user key, record) for every user of the log files."""

    def __init__(self, files: list[pathlib.Path], schema: LogSchema, *, skip_bad_rows: bool, drop_duplicates: bool):
        super().__init__()
        self.files, self.schema = [str(f) for f in files], schema
        self.skip_bad_rows, self.drop_duplicates = skip_bad_rows, drop_duplicates

    def expand(self, pipeline):
        return (pipeline
                | "LogFiles" >> beam.Create(self.files)
                | "ReadUserRows" >> beam.FlatMap(user_parts, self.schema, self.skip_bad_rows)
                | "GroupByUser" >> beam.GroupByKey()
                | "UserRecord" >> beam.Map(user_example, self.drop_duplicates))
