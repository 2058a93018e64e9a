"""Per-id files of a log's schema: item/user attribute tables and frozen content embeddings.

These are small next to the log (one row per item or user), so each is read whole at load time
(never prepared: changing one never re-reads the log). Ids are keyed as in the log
(vocabulary.py). A table whose ids match under half of the vocabulary's is refused (the wrong file
or the wrong key column); a lower but acceptable match rate is logged.
"""

from __future__ import annotations

import logging
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from genrank_jax.data.builders.rows import BadRows, DataError, MissingFileError
from genrank_jax.data.own_log.reader import _keys, _Rows, file_format
from genrank_jax.data.own_log.schema import LogSchema, SideTable
from genrank_jax.data.own_log.vocabulary import IdVocabulary, keys_of

log = logging.getLogger(__name__)
MIN_MATCH_RATE = 0.5


def read_table(path: pathlib.Path, columns: list[str], role: str) -> pa.Table:
    if not path.is_file():
        raise MissingFileError(f"{path} ({role}) does not exist")
    try:
        if file_format(path) == "parquet":
            table = pq.read_table(path)
        else:
            delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
            table = pcsv.read_csv(path, parse_options=pcsv.ParseOptions(delimiter=delimiter),
                                  convert_options=pcsv.ConvertOptions(column_types={columns[0]: pa.string()}))
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"{path} ({role}): not readable ({' '.join(str(error).split())})") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(f"{path} ({role}): no column {missing[0]!r}; "
                        f"the file's columns: {', '.join(table.column_names)}")
    if table.num_rows == 0:
        raise DataError(f"{path} ({role}): the file has no rows")
    return table


def feature_table(table: SideTable, columns: list[str], kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(keys [N] int64, values [N, F] int64 keys; missing values MISSING_KEY) of an attribute table."""
    data = read_table(table.path, [table.key, *columns], f"the {kind} table")
    rows = _Rows(table.path, 0, lambda r: None, BadRows(skip=False), data.num_rows)
    keys = _keys(table.path, data.column(table.key).combine_chunks(), table.key, f"{kind} id", rows)
    values = [_keys(table.path, data.column(c).combine_chunks(), c, f"{kind} feature", rows, nullable=True)
              for c in columns]
    unique, first = np.unique(keys, return_index=True)
    if len(unique) < len(keys):
        doubled = np.setdiff1d(np.arange(len(keys)), first)[0]
        raise DataError(f"{table.path}: {kind} id {data.column(table.key)[int(doubled)].as_py()!r} has two rows "
                        f"(row {doubled + 1:,}); an attribute table has one row per {kind}")
    return keys, np.stack(values, 1) if values else np.zeros((len(keys), 0), np.int64)


def check_match(path: pathlib.Path, vocabulary_keys: np.ndarray, table_keys: np.ndarray, kind: str) -> float:
    """Fraction of the vocabulary's ids the table has; DataError under MIN_MATCH_RATE."""
    if not len(vocabulary_keys):
        return 1.0
    rate = float(np.isin(vocabulary_keys, table_keys).mean())
    if rate < MIN_MATCH_RATE:
        raise DataError(f"{path}: only {rate:.0%} of the log's {kind}s have a row in this file: the wrong file, or "
                        f"the wrong {kind} id column?")
    if rate < 1.0:
        log.warning("%s: %.1f%% of the log's %ss have a row; the others get missing features", path, 100 * rate, kind)
    return rate


def content_rows(schema: LogSchema, items: IdVocabulary) -> np.ndarray:
    """[items.size, C] float32 content embeddings of the vocabulary's items (OOV rows and items
    the file lacks: zeros)."""
    source = schema.content
    if source.column is not None:
        data = read_table(schema.item_table.path, [schema.item_table.key, source.column], "the item table")
        column = data.column(source.column).combine_chunks()
        if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
                or pa.types.is_fixed_size_list(column.type)):
            raise DataError(f"{schema.item_table.path}: content column {source.column!r} has type {column.type}, "
                            "but must be a list of floats")
        lengths = np.asarray(pc.list_value_length(column).fill_null(-1), np.int64)
        if (lengths != lengths[0]).any() or lengths[0] <= 0:
            bad = int(np.flatnonzero((lengths != lengths[0]) | (lengths <= 0))[0]) if lengths[0] > 0 else 0
            raise DataError(f"{schema.item_table.path}: content column {source.column!r}, row {bad + 1:,}: "
                            f"every row needs a list of the same length (row 1 has {lengths[0]})")
        flat = pc.list_flatten(column)
        if pa.types.is_float64(flat.type):
            _check_float32_range(schema.item_table.path, np.asarray(flat.fill_null(0.0)), int(lengths[0]))
        matrix = np.asarray(flat.cast(pa.float32()), np.float32).reshape(len(lengths), -1)
        rows = _Rows(schema.item_table.path, 0, lambda r: None, BadRows(skip=False), data.num_rows)
        keys = _keys(schema.item_table.path, data.column(schema.item_table.key).combine_chunks(),
                     schema.item_table.key, "item id", rows)
        where = schema.item_table.path
    else:
        matrix, keys, where = _npy_content(source.npy, source.ids)
    if not np.isfinite(matrix).all():
        row = int(np.flatnonzero(~np.isfinite(matrix).all(1))[0])
        raise DataError(f"{where}: content row {row + 1:,} holds NaN or infinity")
    check_match(where, items.keys, keys, "item")
    out = np.zeros((items.size, matrix.shape[1]), np.float32)
    known = items.is_known(keys)
    out[items.dense(keys[known])] = matrix[known]
    return out


F32_MAX = float(np.finfo(np.float32).max)


def _check_float32_range(where, values: np.ndarray, width: int) -> None:
    """A finite value past float32's range would become inf in the cast and then read as 'NaN or
    infinity': name it for what it is."""
    beyond = np.isfinite(values) & (np.abs(values) > F32_MAX)
    if beyond.any():
        first = int(np.flatnonzero(beyond)[0])
        raise DataError(f"{where}: content row {first // width + 1:,} holds {values[first]:.3g}, outside float32's "
                        f"range (|x| <= {F32_MAX:.3g}): rescale the content")


def _load_npy(path: pathlib.Path, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:  # text, pickled objects, a file cut short
        raise DataError(f"{path} ({what}): not a .npy array ({' '.join(str(error).split())[:160]})") from None


def _npy_content(npy: pathlib.Path, ids: pathlib.Path) -> tuple[np.ndarray, np.ndarray, pathlib.Path]:
    for path in (npy, ids):
        if not path.is_file():
            raise MissingFileError(f"{path} (content) does not exist")
    matrix = _load_npy(npy, "content")
    if matrix.ndim != 2 or matrix.dtype.kind not in "fiu":
        raise DataError(f"{npy} (content): want a 2-D float matrix [items, width], got {matrix.dtype} {matrix.shape}")
    if matrix.dtype.kind == "f" and matrix.dtype.itemsize > 4:
        _check_float32_range(npy, matrix.reshape(-1), matrix.shape[1])
    if ids.suffix == ".npy":
        raw = _load_npy(ids, "content ids")
    else:
        raw = np.array([line.strip() for line in ids.read_text(encoding="utf-8-sig").splitlines() if line.strip()])
    if len(raw) != len(matrix):
        raise DataError(f"{ids} (content ids): {len(raw):,} ids for the {len(matrix):,} rows of {npy}")
    return matrix.astype(np.float32), keys_of(raw), npy
