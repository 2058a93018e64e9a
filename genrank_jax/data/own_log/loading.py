"""`load_dataset("log:PATH", schema=...)`: a user's log, prepared once, as a `RankingDataset`.

`prepare_log` writes the TFDS records (builder.py) once, under `<tfds_dir>/log-<key>`, where the
key hashes the log files (name, size, mtime), the schema entries that shape the records, the
bad-row and duplicate options and the builder version: a changed file or schema prepares again.
TFDS writes into an `.incomplete` folder and renames it when done, so an interrupted prepare
leaves nothing a later run takes for a finished one. Options applied at load time (the split,
requests, vocabulary, item and user tables, content) never prepare again.

`load_log` then decides the split (as for MovieLens: temporal by default), builds the vocabulary
from the train split only (vocabulary.py) and maps every id through it. Each user keeps their own
timeline (`Interactions.user_ids`, dense over every user of the log) while users outside the
vocabulary share OOV embedding rows (`Interactions.user_rows`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib

import numpy as np

from genrank_jax.data.builders.rows import DataError, MissingFileError
from genrank_jax.data.loading import (
    Split,
    _without_tfds_progress_bars,
    check_cutoff,
    last_request_split,
    request_starts,
    temporal_cutoff,
    tfds_root,
)
from genrank_jax.data.own_log import memory_mapped
from genrank_jax.data.own_log.builder import GenrankOwnLog
from genrank_jax.data.own_log.reader import log_files
from genrank_jax.data.own_log.schema import LogSchema, load_schema
from genrank_jax.data.own_log.side_tables import check_match, content_rows, feature_table
from genrank_jax.data.own_log.vocabulary import FeatureVocabulary, IdVocabulary, Vocabulary
from genrank_jax.data.schema import FeatureSpec, Interactions, ItemCatalog, RankingDataset

log = logging.getLogger(__name__)


def prepare_key(files: list[pathlib.Path], schema: LogSchema, skip_bad_rows: bool, drop_duplicates: bool) -> str:
    """Hash of what the prepared records depend on (see the module docstring)."""
    shaping = {k: v for k, v in schema.describe().items()
               if k in ("user", "item", "time", "time_unit", "actions", "request", "delimiter")}
    shaping["log_item_features"] = schema.log_item_features
    shaping["log_user_features"] = schema.log_user_features
    state = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    blob = json.dumps([GenrankOwnLog.name, str(GenrankOwnLog.VERSION), shaping, skip_bad_rows, drop_duplicates, state])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def as_schema(schema: LogSchema | str | os.PathLike | None) -> LogSchema:
    if schema is None:
        raise MissingFileError("a log: source needs its schema file", hint="pass schema=\"schema.toml\"",
                               cli_hint="pass --schema schema.toml")
    return schema if isinstance(schema, LogSchema) else load_schema(schema)


def log_builder(path: str | os.PathLike, schema: LogSchema | str | os.PathLike, *,
                tfds_dir: str | os.PathLike | None = None, skip_bad_rows: bool = False,
                drop_duplicates: bool = False, beam: bool = False) -> GenrankOwnLog:
    """The log's builder, its cache folder keyed by the files and schema; nothing written yet
    (`prepare_log` writes; `builder.is_prepared()` says whether an earlier run did)."""
    schema = as_schema(schema)
    files = log_files(path)
    key = prepare_key(files, schema, skip_bad_rows, drop_duplicates)
    return GenrankOwnLog(schema=schema, log_path=path, data_dir=str(tfds_root(tfds_dir) / f"log-{key}"),
                         skip_bad_rows=skip_bad_rows, drop_duplicates=drop_duplicates, beam=beam)


def prepare_log(path: str | os.PathLike, schema: LogSchema | str | os.PathLike, *,
                tfds_dir: str | os.PathLike | None = None, skip_bad_rows: bool = False,
                drop_duplicates: bool = False, beam_runner=None, beam_options=None) -> GenrankOwnLog:
    """The log's builder with its records written (reused while files and schema are unchanged).

    beam_runner / beam_options: prepare with Apache Beam (`pip install genrank-jax[beam]`), e.g.
    "DirectRunner" here, or a Dataflow/Flink/Spark runner with its PipelineOptions.
    """
    import tensorflow_datasets as tfds

    builder = log_builder(path, schema, tfds_dir=tfds_dir, skip_bad_rows=skip_bad_rows,
                          drop_duplicates=drop_duplicates, beam=beam_runner is not None)
    config = tfds.download.DownloadConfig(manual_dir=str(builder._manual_dir), beam_runner=beam_runner,
                                          beam_options=beam_options)
    with _without_tfds_progress_bars():
        builder.download_and_prepare(file_format="array_record", download_config=config)
    return builder


def read_records(builder: GenrankOwnLog, batch_records: int = 20_000) -> dict:
    """Every record as concatenated arrays, users in key order (rows of a user in record order).

    Records are decoded a batch at a time into arrays allocated once (the row count is in the
    metadata of a single-process build; a Beam build's is summed as records arrive), so the
    per-record Python objects of a 10^6-user log are never all alive at once."""
    from genrank_jax.data.loading import read_prepared_records

    count = builder.info.splits["train"].num_examples
    schema = builder.schema
    widths = {"item_keys": (), "time_ms": (), "actions": (len(schema.actions),),
              "item_side": (len(schema.log_item_features),), "request": ()}
    dtypes = {"actions": np.uint8}
    fields = {"item_keys": "item_ids", "time_ms": "timestamp_ms", "actions": "actions", "item_side": "item_side"}
    wanted = [name for name in widths if (name != "item_side" or schema.log_item_features)
              and (name != "request" or schema.request)]
    total = builder.info.metadata.get("num_rows")
    parts: dict[str, list] = {name: [] for name in wanted}
    out = (None if total is None
           else {name: np.empty((total, *widths[name]), dtypes.get(name, np.int64)) for name in wanted})
    user_keys, lengths, user_side, filled = [], [], [], 0
    for first in range(0, count, batch_records):
        records = read_prepared_records(builder, range(first, min(count, first + batch_records)))
        for record in records:
            user_keys.append(int(record["user"]))
            lengths.append(len(record["item_ids"]))
            user_side.append(np.asarray(record["user_features"], np.int64))
        for name in wanted:
            get = (lambda r: r["extras"]["request"]) if name == "request" else (lambda r, key=fields[name]: r[key])
            block = np.concatenate([np.asarray(get(r)).reshape(-1, *widths[name]) for r in records])
            if out is None:
                parts[name].append(block)
            else:
                out[name][filled:filled + len(block)] = block
        filled += sum(lengths[-len(records):])
    arrays = ({name: (np.concatenate(p) if p else np.zeros((0, *widths[name]), dtypes.get(name, np.int64)))
               for name, p in parts.items()} if out is None else {name: a[:filled] for name, a in out.items()})
    # users in key order: deterministic whatever order the record files hold them in
    user_keys, lengths = np.asarray(user_keys, np.int64), np.asarray(lengths, np.int64)
    by_key = np.argsort(user_keys, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    rows = (np.concatenate([np.arange(offsets[u], offsets[u + 1]) for u in by_key]) if len(by_key)
            else np.zeros(0, np.int64))
    for name in wanted:  # one array at a time: the gather copies one column, not the log
        arrays[name] = arrays[name][rows]
    del rows
    return {
        "user_keys": user_keys[by_key], "lengths": lengths[by_key],
        "item_keys": arrays["item_keys"],
        "timestamps": arrays.pop("time_ms").astype(np.float64) / 1000.0,
        "actions": arrays["actions"],
        "item_side": arrays["item_side"] if schema.log_item_features else np.zeros((filled, 0), np.int64),
        "user_side": (np.stack(user_side)[by_key] if user_side else np.zeros((0, 0), np.int64))
        .reshape(len(by_key), len(schema.log_user_features)),
        "request": arrays.get("request"),
    }


def load_log(path: str | os.PathLike, schema: LogSchema | str | os.PathLike | None, *, split: Split = "temporal",
             cutoff: float | None = None, train_fraction: float = 0.8, request_gap_seconds: float | None = None,
             max_request_size: int | None = None, tfds_dir: str | os.PathLike | None = None,
             skip_bad_rows: bool = False, drop_duplicates: bool = False, name: str | None = None) -> RankingDataset:
    """The log at `path` as a validated RankingDataset (see the module docstring). Its arrays are
    memory-mapped from a folder beside the records, written by the first load with these options."""
    if split not in ("temporal", "last_request"):
        raise ValueError(f"split must be 'temporal' or 'last_request', got {split!r}")
    schema = as_schema(schema)
    builder = prepare_log(path, schema, tfds_dir=tfds_dir, skip_bad_rows=skip_bad_rows, drop_duplicates=drop_duplicates)
    options = load_options(path, split=split, cutoff=cutoff, train_fraction=train_fraction,
                           request_gap_seconds=request_gap_seconds, max_request_size=max_request_size, name=name)
    folder = loaded_folder(builder, schema, options)
    dataset = memory_mapped.load(folder)
    if dataset is None:
        memory_mapped.save(_build_dataset(builder, schema, path, **{k: v for k, v in options.items() if k != "path"},
                                          drop_duplicates=drop_duplicates), folder)
        dataset = memory_mapped.load(folder)
    dataset.validate()
    return dataset


def loaded_folder(builder: GenrankOwnLog, schema: LogSchema, options: dict) -> pathlib.Path:
    """Where the first load with `options` saves the dataset's arrays for later loads to map."""
    return pathlib.Path(builder.data_dir).parents[1] / f"loaded-{load_key(schema, options)}"


def load_options(path, *, split: Split = "temporal", cutoff: float | None = None, train_fraction: float = 0.8,
                 request_gap_seconds: float | None = None, max_request_size: int | None = None,
                 name: str | None = None) -> dict:
    """The load options `load_log` keys its saved arrays by (its own defaults)."""
    return dict(split=split, cutoff=cutoff, train_fraction=train_fraction, request_gap_seconds=request_gap_seconds,
                max_request_size=max_request_size, name=name, path=str(path))


def load_key(schema: LogSchema, options: dict) -> str:
    """Hash of everything a load decides beyond the records: options, the whole schema and the
    side files it names (an edited item table or content file loads again)."""
    side = [p for p in (schema.item_table and schema.item_table.path, schema.user_table and schema.user_table.path,
                        schema.content and schema.content.npy, schema.content and schema.content.ids) if p]
    state = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] if p.exists() else [str(p)] for p in side]
    blob = json.dumps([options, schema.describe(), state], default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _build_dataset(builder: GenrankOwnLog, schema: LogSchema, path, *, split, cutoff, train_fraction,
                   request_gap_seconds, max_request_size, drop_duplicates, name) -> RankingDataset:
    data = read_records(builder)
    if not len(data["item_keys"]):
        raise DataError(f"{path}: the prepared log has no rows")
    timeline = np.repeat(np.arange(len(data["user_keys"]), dtype=np.int32), data["lengths"])
    times = data["timestamps"]
    gap = schema.request_gap_seconds if request_gap_seconds is None else request_gap_seconds
    max_size = schema.max_request_size if max_request_size is None else max_request_size
    if split == "temporal" and cutoff is None:
        cutoff = temporal_cutoff(times, train_fraction)
    elif split == "temporal":
        check_cutoff(cutoff, times)
    breaks = None
    if data["request"] is not None:  # the log's own request ids cut requests; the gap rule is off
        breaks = np.ones(len(times), bool)
        breaks[1:] = data["request"][1:] != data["request"][:-1]
        gap = np.inf
    starts = request_starts(timeline, times, gap_seconds=gap, max_size=max_size,
                            cutoff=cutoff if split == "temporal" else None, breaks=breaks)
    timeline_log = Interactions(user_ids=timeline, item_ids=np.zeros(len(times), np.int32), timestamps=times,
                                actions=data["actions"], request_starts=starts)
    if split == "temporal":
        is_eval = timeline_log.request_times() >= cutoff
        train, evaluation = np.flatnonzero(~is_eval), np.flatnonzero(is_eval)
    else:
        train, evaluation = last_request_split(timeline_log)
    is_train = np.zeros(timeline_log.num_requests, bool)
    is_train[train] = True
    train_rows = np.repeat(is_train, np.diff(starts))
    if not train_rows.any():
        raise DataError(f"{path}: no exposure falls in the train split (cutoff {cutoff})")

    users = IdVocabulary.from_counts(data["user_keys"][timeline[train_rows]], schema.min_count, schema.oov_buckets)
    items = IdVocabulary.from_counts(data["item_keys"][train_rows], schema.min_count, schema.oov_buckets)
    item_ids = items.dense(data["item_keys"])
    user_rows = users.dense(data["user_keys"])
    item_side, item_vocabs = _item_features(schema, items, data, item_ids)
    user_features, user_vocabs = _user_features(schema, users, data)
    content = content_rows(schema, items) if schema.content else None
    vocabulary = Vocabulary(users=users, items=items, item_features=item_vocabs, user_features=user_vocabs,
                            min_count=schema.min_count,
                            info={"source": f"log:{path}", "cutoff": cutoff, "split": split,
                                  "schema_digest": schema.digest()})
    spec = FeatureSpec(num_items=items.size, num_users=users.size, action_names=schema.action_names,
                       side_vocab_sizes=tuple(v.size for v in item_vocabs.values()),
                       content_dim=0 if content is None else content.shape[1])
    interactions = Interactions(user_ids=timeline, item_ids=item_ids, timestamps=times, actions=data["actions"],
                                request_starts=starts, user_rows=user_rows,
                                extras={"request": data["request"]} if data["request"] is not None else {})
    meta = builder.info.metadata
    eval_rows = ~train_rows
    new_items = ~items.is_known(data["item_keys"][eval_rows])
    dataset = RankingDataset(
        name=name or f"log:{path}", spec=spec, catalog=ItemCatalog(side_features=item_side, content=content),
        interactions=interactions, train_requests=train.astype(np.int64), eval_requests=evaluation.astype(np.int64),
        user_features=user_features, vocabulary=vocabulary,
        info={"format": "own log", "split": split, "cutoff": cutoff, "request_gap_seconds": gap,
              "max_request_size": max_size, "bad_rows": dict(meta.get("bad_rows", {})),
              "duplicate_rows": int(meta.get("duplicate_rows", 0)), "drop_duplicates": drop_duplicates,
              "side_feature_names": tuple(item_vocabs), "prepared_dir": str(builder.data_dir),
              "known_items": items.num_known, "known_users": users.num_known,
              "eval_exposures_of_new_items": float(new_items.mean()) if new_items.size else 0.0},
    )
    dataset.validate()
    return dataset


def _item_features(schema: LogSchema, items: IdVocabulary, data: dict, item_ids: np.ndarray):
    """[items.size, F] codes of the item features and their vocabularies (OOV rows: 0, missing)."""
    if schema.item_table is not None and schema.item_features:
        keys, values = feature_table(schema.item_table, list(schema.item_features.values()), "item")
        check_match(schema.item_table.path, items.keys, keys, "item")
    elif schema.log_item_features:
        # a feature read from the log: the value at the item's latest exposure
        order = np.lexsort((data["timestamps"], data["item_keys"]))
        last = order[np.append(np.flatnonzero(np.diff(data["item_keys"][order])), len(order) - 1)]
        keys, values = data["item_keys"][last], data["item_side"][last]
    else:
        return np.zeros((items.size, 0), np.int32), {}
    return _codes(items, keys, values, list(schema.item_features))


def _user_features(schema: LogSchema, users: IdVocabulary, data: dict):
    if schema.user_table is not None and schema.user_features:
        keys, values = feature_table(schema.user_table, list(schema.user_features.values()), "user")
        check_match(schema.user_table.path, users.keys, keys, "user")
    elif schema.log_user_features:
        keys, values = data["user_keys"], data["user_side"]
    else:
        return {}, {}
    codes, vocabs = _codes(users, keys, values, list(schema.user_features))
    return {name: codes[:, f] for f, name in enumerate(vocabs)}, vocabs


def _codes(ids: IdVocabulary, keys: np.ndarray, values: np.ndarray, names: list[str]):
    vocabs = {name: FeatureVocabulary.of(values[:, f]) for f, name in enumerate(names)}
    out = np.zeros((ids.size, len(names)), np.int32)
    known = ids.is_known(keys)
    rows = ids.dense(keys[known])
    for f, name in enumerate(names):
        out[rows, f] = vocabs[name].codes(values[known, f])
    return out, vocabs
