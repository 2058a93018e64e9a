"""Reading a user's log with pyarrow, one record batch at a time, into checked numpy chunks.

A log is a Parquet file, a folder of Parquet files (read in name order), or one CSV/TSV file
(optionally .gz). Nothing is ever held as Python objects per row: each batch of about a million
rows becomes a `Chunk` of int64 keys (vocabulary.py), int64 milliseconds and uint8 actions.

Every problem names the file, the column and the row (1-based data row; Parquet adds its row
group). A problem with one row (null id, NaN or 2 in an action, an unparsable time) is a
`MalformedRowError`, which `skip_bad_rows` turns into a count; a problem with the file (a missing
or doubled column, a wrong type, an empty file, times that all fall in 1970) always stops.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from genrank_jax.data.builders.rows import BadRows, DataError, MissingFileError, utc_date
from genrank_jax.data.own_log.schema import LogSchema
from genrank_jax.data.own_log.vocabulary import MISSING_KEY, string_keys

BATCH_ROWS = 1 << 20
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
# A log whose times all fall before 1971 (or after 2200) was read in the wrong unit.
_EARLIEST_MS, _LATEST_MS = 365 * 86_400_000, 7_258_118_400_000
_MS_PER_UNIT = {"s": 1000.0, "ms": 1.0, "us": 1e-3}


@dataclasses.dataclass
class Chunk:
    """Rows `first_row .. first_row + n` of one file, checked and converted.

    user, item: [n] int64 keys; time_ms: [n] int64; actions: [n, A] uint8; request: [n] int64
    keys or None; item_side: [n, F] int64 keys (MISSING_KEY for null); user_side: [n, G] likewise.
    """

    user: np.ndarray
    item: np.ndarray
    time_ms: np.ndarray
    actions: np.ndarray
    request: np.ndarray | None
    item_side: np.ndarray
    user_side: np.ndarray

    def __len__(self) -> int:
        return len(self.user)

    def take(self, rows: np.ndarray) -> "Chunk":
        return Chunk(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[rows]
                        for f in dataclasses.fields(self)})


def log_files(path: str | pathlib.Path) -> list[pathlib.Path]:
    """The files of a log path: a Parquet/CSV/TSV file, or every Parquet file in a folder."""
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise MissingFileError(f"log {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PARQUET_SUFFIXES)
        if not files:
            raise MissingFileError(f"log folder {path} holds no Parquet files (*.parquet, *.pq)")
        return files
    file_format(path)
    return [path]


def file_format(path: pathlib.Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".zst"):
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in PARQUET_SUFFIXES:
        return "parquet"
    if last in CSV_SUFFIXES:
        return "csv"
    raise DataError(f"{path}: not a log file this loader reads (want .parquet, .pq, .csv, .tsv, .tab, "
                    "optionally .gz; or a folder of Parquet files)")


def read_chunks(files: list[pathlib.Path], schema: LogSchema, bad: BadRows) -> Iterator[Chunk]:
    """Every file's rows as checked chunks (see the module docstring); DataError if all are empty."""
    total = 0
    for path in files:
        for chunk in _file_chunks(path, schema, bad):
            total += len(chunk)
            yield chunk
    if total == 0:
        raise DataError(f"{files[0] if len(files) == 1 else files[0].parent}: the log has no rows"
                        + (" left after skipping malformed ones" if sum(bad.counts.values()) else ""))


def _needed_columns(schema: LogSchema) -> list[str]:
    return list(dict.fromkeys(schema.log_columns().values()))


def _check_header(path: pathlib.Path, names: list[str], schema: LogSchema) -> None:
    doubled = sorted({n for n in names if names.count(n) > 1})
    roles = schema.log_columns()
    for name in doubled:
        if name in roles.values():
            raise DataError(f"{path}: column {name!r} appears {names.count(name)} times in the file's header; "
                            "rename one of them")
    for role, column in roles.items():
        if column not in names:
            near = [n for n in names if n.strip().lower() == column.strip().lower()]
            hint = f" (the file has {near[0]!r})" if near else ""
            if names and names[0].startswith("\ufeff"):
                hint = " (the file starts with a UTF-8 byte-order mark: save it without one)"
            shown = ", ".join(repr(n) for n in names[:20]) + (", ..." if len(names) > 20 else "")
            raise DataError(f"{path}: no column {column!r} (named by {role} in the schema){hint}; "
                            f"the file's columns: {shown}")


def _parquet_batches(path: pathlib.Path, schema: LogSchema):
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"{path}: not a readable Parquet file ({error})") from None
    _check_header(path, parquet.schema_arrow.names, schema)
    group_ends = np.cumsum([parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)])
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=_needed_columns(schema)):
            yield row, lambda r, ends=group_ends: f"row group {int(np.searchsorted(ends, r, side='right'))}", batch
            row += batch.num_rows
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"{path}: unreadable after row {row:,} ({error})") from None


def _csv_batches(path: pathlib.Path, schema: LogSchema, bad: BadRows):
    delimiter = schema.delimiter or CSV_SUFFIXES[[s.lower() for s in path.suffixes if s.lower() in CSV_SUFFIXES][-1]]
    # ids and times stay text: pyarrow infers types per block, so a column whose first block looks
    # numeric would fail on a later "abc"; vocabulary.py turns canonical integer strings into ints.
    text = [schema.user, schema.item] + ([schema.request] if schema.request else [])
    text += list(schema.log_item_features.values()) + list(schema.log_user_features.values())
    if schema.time_unit == "iso":
        text.append(schema.time)

    refused = []

    def invalid_row(row) -> str:
        # an exception raised here would be lost inside pyarrow: remember the row, let it fail
        reason = (row.number or 0, f"{row.expected_columns} fields expected, {row.actual_columns} found", row.text)
        if not bad.skip:
            refused.append(reason)
            return "error"
        bad.report(path, *reason)
        return "skip"

    def raise_refused():
        if refused:
            bad.report(path, *refused[0])  # raises MalformedRowError naming the line

    try:
        reader = pcsv.open_csv(
            path, read_options=pcsv.ReadOptions(block_size=64 << 20),
            parse_options=pcsv.ParseOptions(delimiter=delimiter, invalid_row_handler=invalid_row),
            convert_options=pcsv.ConvertOptions(include_columns=_needed_columns(schema),
                                                column_types={c: pa.string() for c in text}))
    except pa.ArrowInvalid as error:
        raise_refused()
        message = str(error)
        if "No columns in CSV file" in message or "Empty CSV file" in message:
            raise DataError(f"{path}: the file is empty (no header, no rows)") from None
        if "Column '" in message and "in include_columns does not exist" in message:
            _check_header(path, _csv_header(path, delimiter), schema)
        raise DataError(f"{path}: not readable as a {'TSV' if delimiter == chr(9) else 'CSV'} log "
                        f"({message})") from None
    _check_header(path, _csv_header(path, delimiter), schema)
    row = 0
    try:
        for batch in reader:
            yield row, lambda r: None, batch
            row += batch.num_rows
    except pa.ArrowInvalid as error:
        raise_refused()
        raise DataError(f"{path}: unreadable after row {row:,} ({' '.join(str(error).split())})") from None


def _csv_header(path: pathlib.Path, delimiter: str) -> list[str]:
    """The header's column names (first line), read apart from the data: a bad data row must
    not stop the header check."""
    import csv
    import io

    with pa.input_stream(str(path), compression="detect") as stream:
        head = stream.read(1 << 20).decode("utf-8", errors="replace")
    return next(csv.reader(io.StringIO(head.splitlines()[0] if head else ""), delimiter=delimiter), [])


def _file_chunks(path: pathlib.Path, schema: LogSchema, bad: BadRows) -> Iterator[Chunk]:
    batches = _parquet_batches(path, schema) if file_format(path) == "parquet" else _csv_batches(path, schema, bad)
    for first_row, group_of, batch in batches:
        if batch.num_rows:
            chunk = _convert(path, schema, batch, first_row, group_of, bad)
            if len(chunk):
                yield chunk


class _Rows:
    """Marks a batch's bad rows: each is reported (raising, or counted when skipping) once."""

    def __init__(self, path, first_row, group_of, bad: BadRows, num_rows: int):
        self.path, self.first_row, self.group_of, self.bad = path, first_row, group_of, bad
        self.keep = np.ones(num_rows, bool)

    def where(self, row: int) -> str:
        absolute = self.first_row + row
        group = self.group_of(absolute)
        return f"row {absolute + 1:,}" + (f" ({group})" if group else "")

    def reject(self, mask: np.ndarray, column: str, reason: str, values) -> None:
        for row in np.flatnonzero(mask & self.keep):
            value = values[int(row)]
            self.bad.report(self.path, self.first_row + int(row) + 1, f"column {column!r}, {self.where(int(row))}: "
                            f"{reason}", value.as_py() if hasattr(value, "as_py") else value)
            self.keep[row] = False


def _fail_type(path, column: str, role: str, array: pa.Array, wanted: str):
    raise DataError(f"{path}: column {column!r} ({role}) has type {array.type}, but must be {wanted}")


def _keys(path, array: pa.Array, column: str, role: str, rows: _Rows, *, nullable: bool = False) -> np.ndarray:
    """int64 keys of an id/category column (integers or strings); nulls rejected or MISSING_KEY."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    nulls = np.asarray(array.is_null(), bool)
    if pa.types.is_integer(array.type):
        if pa.types.is_uint64(array.type) and pc.max(array).as_py() is not None and pc.max(array).as_py() >= 2**63:
            raise DataError(f"{path}: column {column!r} ({role}) holds ids >= 2^63: store them as strings")
        keys = np.asarray(array.fill_null(0).cast(pa.int64()), np.int64)
    elif pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        unique = pc.unique(array.drop_null())
        keys = string_keys(unique.to_pylist())
        index = np.asarray(pc.index_in(array, value_set=unique).fill_null(0), np.int64)
        keys = keys[index] if len(keys) else np.zeros(len(array), np.int64)
    else:
        _fail_type(path, column, role, array, "integer or string ids")
    if nulls.any():
        if nullable:
            keys = np.where(nulls, MISSING_KEY, keys)
        else:
            rows.reject(nulls, column, f"null {role}", array)
    return keys


def _time_ms(path, array: pa.Array, schema: LogSchema, rows: _Rows) -> np.ndarray:
    column, unit = schema.time, schema.time_unit
    if pa.types.is_timestamp(array.type) or pa.types.is_date(array.type):
        array = array.cast(pa.timestamp("ms", tz=getattr(array.type, "tz", None)))
        ms = np.asarray(array.cast(pa.int64()).fill_null(0), np.int64)
    elif unit == "iso":
        if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
            _fail_type(path, column, "columns.time, time_unit = \"iso\"", array, "ISO 8601 strings")
        ms = _parse_iso(array, column, rows)
    else:
        if not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)):
            _fail_type(path, column, f"columns.time, time_unit = {unit!r}", array,
                       "numbers (or set time_unit = \"iso\" for date strings)")
        values = np.asarray(array.cast(pa.float64()).fill_null(np.nan), np.float64)
        rows.reject(~np.isfinite(values), column, "time is null, NaN or infinite", values)
        ms = np.round(np.where(np.isfinite(values), values, 0.0) * _MS_PER_UNIT[unit]).astype(np.int64)
    rows.reject(np.asarray(array.is_null(), bool), column, "time is null", array)
    kept = ms[rows.keep]
    if len(kept) and kept.max() < _EARLIEST_MS:
        raise DataError(f"{rows.path}: column {column!r} read with time_unit = {unit!r} puts every date of "
                        f"{rows.where(0)}.. in 1970 (latest {utc_date(kept.max() / 1000)}): the unit is too large "
                        "for these numbers (seconds where ms were given?)")
    if len(kept) and kept.min() > _LATEST_MS:
        raise DataError(f"{rows.path}: column {column!r} read with time_unit = {unit!r} puts every date of "
                        f"{rows.where(0)}.. after 2200 (earliest {utc_date(kept.min() / 1000)}): the unit is too "
                        "small for these numbers (ms where seconds were given?)")
    return ms


def _parse_iso(array: pa.Array, column: str, rows: _Rows) -> np.ndarray:
    # pyarrow parses ISO 8601 with a zone offset only as tz-aware, without one only as naive: split.
    zoned = np.asarray(pc.match_substring_regex(array, r"(Z|[+-]\d\d:?\d\d)$").fill_null(False), bool)
    ms = np.zeros(len(array), np.int64)
    for mask, kind in ((zoned, pa.timestamp("ms", tz="UTC")), (~zoned, pa.timestamp("ms"))):
        if not mask.any():
            continue
        part = array.filter(pa.array(mask))
        try:
            parsed = part.cast(kind)
        except pa.ArrowInvalid:
            parsed = pa.array([_parse_one(v, kind) for v in part.to_pylist()], kind)
        ms[mask] = np.asarray(parsed.cast(pa.int64()).fill_null(np.iinfo(np.int64).min), np.int64)
    unparsed = (ms == np.iinfo(np.int64).min) & ~np.asarray(array.is_null(), bool)
    rows.reject(unparsed, column, "time is not an ISO 8601 date-time", array)
    return np.where(unparsed, 0, ms)


def _parse_one(value, kind):
    try:
        return pa.array([value]).cast(kind)[0].as_py()
    except pa.ArrowInvalid:
        return None


def _actions(path, array: pa.Array, column: str, name: str, rows: _Rows) -> np.ndarray:
    role = f"actions.{name}"
    if not (pa.types.is_boolean(array.type) or pa.types.is_integer(array.type) or pa.types.is_floating(array.type)):
        _fail_type(path, column, role, array, "0/1 numbers or booleans")
    values = np.asarray(array.cast(pa.float64()).fill_null(np.nan), np.float64)
    rows.reject(~((values == 0) | (values == 1)), column, "action value is not 0 or 1", array)
    return np.where(values == 1, 1, 0).astype(np.uint8)


def _convert(path, schema: LogSchema, batch: pa.RecordBatch, first_row: int, group_of, bad: BadRows) -> Chunk:
    rows = _Rows(path, first_row, group_of, bad, batch.num_rows)
    column = lambda name: batch.column(batch.schema.get_field_index(name))
    user = _keys(path, column(schema.user), schema.user, "user id", rows)
    item = _keys(path, column(schema.item), schema.item, "item id", rows)
    time_ms = _time_ms(path, column(schema.time), schema, rows)
    actions = np.stack([_actions(path, column(c), c, name, rows) for name, c in schema.actions.items()], 1)
    request = _keys(path, column(schema.request), schema.request, "request id", rows) if schema.request else None

    def side(features: dict[str, str]) -> np.ndarray:
        parts = [_keys(path, column(c), c, f"feature {name}", rows, nullable=True) for name, c in features.items()]
        return np.stack(parts, 1) if parts else np.zeros((batch.num_rows, 0), np.int64)

    chunk = Chunk(user=user, item=item, time_ms=time_ms, actions=actions, request=request,
                  item_side=side(schema.log_item_features), user_side=side(schema.log_user_features))
    return chunk if rows.keep.all() else chunk.take(np.flatnonzero(rows.keep))
