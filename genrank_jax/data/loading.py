"""From a prepared TFDS log (one record per user) to a `RankingDataset`: requests and splits.

`prepare` builds a builder's array_record files once, cached under a TFDS data dir keyed by a
fingerprint of the raw files (name, size, mtime), so the second load only reads records.
`load_prepared` reads them back through `as_data_source()` and decides, at load time:
- requests: a user's exposures are cut into requests where the time gap to the previous exposure
  exceeds `request_gap_seconds` (and, optionally, every `max_request_size` exposures);
- the split: "temporal" (train = exposures before a cutoff time, default the `train_fraction`
  quantile of exposure times; eval = the rest; requests are also cut at the cutoff, so every
  train exposure is earlier than every eval exposure), or "last_request" (each user's last
  request is eval, for users with at least two requests; a one-request user has no history to
  evaluate with and stays in train).
Everything is deterministic: records are re-sorted by user (TFDS returns them in hashed order).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
from typing import Literal

import numpy as np
import tensorflow_datasets as tfds

from genrank_jax.data.builders.log_builder import LogBuilder
from genrank_jax.data.schema import FeatureSpec, Interactions, ItemCatalog, RankingDataset

Split = Literal["temporal", "last_request"]
DEFAULT_TFDS_DIR = pathlib.Path("~/.cache/genrank_jax/tfds")


def tfds_root(tfds_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Where prepared datasets live: the argument, else $GENRANK_TFDS_DIR, else ~/.cache/genrank_jax/tfds."""
    return pathlib.Path(tfds_dir or os.environ.get("GENRANK_TFDS_DIR") or DEFAULT_TFDS_DIR).expanduser()


def fingerprint(builder_cls: type[LogBuilder], config: str, manual_dir: pathlib.Path, skip_bad_rows: bool,
                drop_duplicates: bool = False) -> str:
    """Hash of what a build depends on: the input files (name, size, mtime), version, options."""
    files = builder_cls.input_files(config, manual_dir)
    state = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    blob = json.dumps([builder_cls.name, config, str(builder_cls.VERSION), skip_bad_rows, drop_duplicates, state])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_builder(builder_cls: type[LogBuilder], config: str, manual_dir: str | os.PathLike, *,
                   tfds_dir: str | os.PathLike | None = None, skip_bad_rows: bool = False,
                   drop_duplicates: bool = False) -> LogBuilder:
    """The builder whose cache folder is keyed by the raw files, nothing written yet (`prepare`
    writes; `builder.is_prepared()` says whether an earlier run did). MissingFileError first."""
    manual_dir = pathlib.Path(manual_dir).expanduser()
    key = fingerprint(builder_cls, config, manual_dir, skip_bad_rows, drop_duplicates)  # MissingFileError first
    data_dir = tfds_root(tfds_dir) / f"{builder_cls.name}-{config}-{key}"
    return builder_cls(config=config, data_dir=str(data_dir), manual_dir=manual_dir, skip_bad_rows=skip_bad_rows,
                       drop_duplicates=drop_duplicates)


def prepare(builder_cls: type[LogBuilder], config: str, manual_dir: str | os.PathLike, *,
            tfds_dir: str | os.PathLike | None = None, skip_bad_rows: bool = False,
            drop_duplicates: bool = False) -> LogBuilder:
    """The builder with its array_record files written (reused when the raw files are unchanged)."""
    builder = cached_builder(builder_cls, config, manual_dir, tfds_dir=tfds_dir, skip_bad_rows=skip_bad_rows,
                             drop_duplicates=drop_duplicates)
    manual_dir = pathlib.Path(manual_dir).expanduser()
    with _without_tfds_progress_bars():
        builder.download_and_prepare(file_format="array_record",
                                     download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder


@contextlib.contextmanager
def _without_tfds_progress_bars():
    # TFDS's bars go to stderr, where a failed build would bury the one-line error under them; the
    # slow part (parsing) has no bar anyway. TFDS has a setter but no getter: the previous state is
    # read from the flag the setter writes, so a caller's own choice is restored.
    from tensorflow_datasets.core.utils import tqdm_utils

    previous = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(False)
    try:
        yield
    finally:
        tfds.display_progress_bar(previous)


def request_starts(user_ids: np.ndarray, timestamps: np.ndarray, *, gap_seconds: float,
                   max_size: int | None = None, cutoff: float | None = None,
                   breaks: np.ndarray | None = None) -> np.ndarray:
    """[R + 1] row offsets of requests over exposures sorted by (user, time).

    A request starts at a user's first exposure, after a gap > gap_seconds, when time crosses
    `cutoff`, where `breaks` ([E] bool, e.g. a change of the log's request id) is True, and
    every `max_size` exposures of one such run.
    """
    rows = len(user_ids)
    new = np.ones(rows, bool)
    if rows > 1:
        gap = np.diff(timestamps)
        new[1:] = (user_ids[1:] != user_ids[:-1]) | (gap > gap_seconds)
        if cutoff is not None:
            new[1:] |= (timestamps[:-1] < cutoff) & (timestamps[1:] >= cutoff)
        if breaks is not None:
            new |= breaks
    if max_size is not None and rows:
        run_start = np.maximum.accumulate(np.where(new, np.arange(rows), 0))
        new |= (np.arange(rows) - run_start) % max_size == 0
    return np.append(np.flatnonzero(new), rows).astype(np.int64)


def temporal_cutoff(timestamps: np.ndarray, train_fraction: float) -> float:
    """The `train_fraction` quantile of exposure times (a time that is actually observed)."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    return float(np.quantile(timestamps, train_fraction, method="higher"))


def check_cutoff(cutoff: float, timestamps: np.ndarray) -> None:
    """ValueError unless `cutoff` (Unix seconds) leaves exposures on both sides, naming the log's dates."""
    from genrank_jax.data.builders.rows import utc_date

    first, last = float(np.min(timestamps)), float(np.max(timestamps))
    if not first < cutoff <= last:
        raise ValueError(f"cutoff {cutoff:g} ({utc_date(cutoff)}) is outside the log, which runs from "
                         f"{utc_date(first)} to {utc_date(last)}: nothing would be left to train or to evaluate on")


def last_request_split(interactions: Interactions) -> tuple[np.ndarray, np.ndarray]:
    """(train, eval) request indices: eval = the last request of each user with >= 2 requests."""
    users = interactions.request_users()
    last = np.ones(len(users), bool)
    last[:-1] = users[1:] != users[:-1]
    first = np.ones(len(users), bool)
    first[1:] = users[1:] != users[:-1]
    is_eval = last & ~first
    requests = np.arange(len(users), dtype=np.int64)
    return requests[~is_eval], requests[is_eval]


def unreadable_cache(builder, error: Exception):
    """The DataError for prepared records that cannot be read: names the folder and the fix."""
    from genrank_jax.data.builders.rows import DataError

    first = (str(error).strip().splitlines() or [""])[0][:200]
    return DataError(f"the prepared data in {builder.data_dir} is unreadable ({type(error).__name__}: {first}): "
                     "delete that folder and run again to prepare it from the raw files")


def read_prepared_records(builder, indices) -> list:
    """Records `indices` of the prepared train split (an unreadable cache: a DataError saying so)."""
    try:
        source = builder.as_data_source(split="train")
        records = source.__getitems__(list(indices)) if len(indices) else []
    except Exception as error:  # array_record/Riegeli raise RuntimeError, ValueError, OSError...
        raise unreadable_cache(builder, error) from error
    missing = [i for i, record in zip(indices, records)
               if record is None or any(value is None for value in record.values())]
    if missing:  # a shard cut short reads back as None records, not as an error
        raise unreadable_cache(builder, ValueError(f"{len(missing)} records read back empty, from record {missing[0]} "
                                                   "on (a file cut short?)"))
    return records


def _concatenate(builder: LogBuilder) -> dict:
    records = read_prepared_records(builder, range(builder.info.splits["train"].num_examples))
    records = sorted(records, key=lambda r: int(r["user"]))
    meta = builder.info.metadata

    def cat(key, dtype, width=None):
        parts = [np.asarray(r[key], dtype) for r in records]
        empty = np.zeros((0,) if width is None else (0, width), dtype)
        return np.concatenate(parts) if parts else empty

    return {
        "user_ids": np.repeat([int(r["user"]) for r in records],
                              [len(r["item_ids"]) for r in records]).astype(np.int32),
        "item_ids": cat("item_ids", np.int32),
        "timestamps": cat("timestamp_ms", np.int64).astype(np.float64) / 1000.0,
        "actions": cat("actions", np.uint8, len(meta["action_names"])),
        "item_side": cat("item_side", np.int32, len(meta["side_feature_names"])),
        "extras": {name: np.concatenate([np.asarray(r["extras"][name]) for r in records])
                   for name in (records[0]["extras"] if records else {})},
        "user_features": np.array([np.asarray(r["user_features"], np.int32) for r in records], np.int32)
        .reshape(len(records), len(meta["user_feature_names"])),
    }


def load_prepared(builder: LogBuilder, *, name: str | None = None, split: Split = "temporal",
                  cutoff: float | None = None, train_fraction: float = 0.8,
                  request_gap_seconds: float | None = None, max_request_size: int | None = None) -> RankingDataset:
    """A prepared builder's records as a validated RankingDataset (see the module docstring).

    request_gap_seconds / max_request_size default to the builder's (MovieLens: 30 min, no cap).
    cutoff (Unix seconds) overrides train_fraction for split="temporal".
    """
    if split not in ("temporal", "last_request"):
        raise ValueError(f"split must be 'temporal' or 'last_request', got {split!r}")
    meta = builder.info.metadata
    gap = meta["default_request_gap_seconds"] if request_gap_seconds is None else request_gap_seconds
    max_size = meta["default_max_request_size"] if max_request_size is None else max_request_size
    data = _concatenate(builder)
    if split == "temporal" and cutoff is None:
        cutoff = temporal_cutoff(data["timestamps"], train_fraction)
    elif split == "temporal":
        check_cutoff(cutoff, data["timestamps"])
    starts = request_starts(data["user_ids"], data["timestamps"], gap_seconds=gap, max_size=max_size,
                            cutoff=cutoff if split == "temporal" else None)
    interactions = Interactions(user_ids=data["user_ids"], item_ids=data["item_ids"], timestamps=data["timestamps"],
                                actions=data["actions"], request_starts=starts, extras=data["extras"])
    if split == "temporal":
        is_eval = interactions.request_times() >= cutoff
        train, evaluation = np.flatnonzero(~is_eval), np.flatnonzero(is_eval)
    else:
        train, evaluation = last_request_split(interactions)
    spec = FeatureSpec(num_items=meta["num_items"], num_users=meta["num_users"],
                       action_names=tuple(meta["action_names"]), side_vocab_sizes=tuple(meta["side_vocab_sizes"]))
    side = np.zeros((spec.num_items, len(spec.side_vocab_sizes)), np.int32)
    side[data["item_ids"]] = data["item_side"]  # every item is exposed at least once (builder contract)
    user_names = meta["user_feature_names"]
    dataset = RankingDataset(
        name=name or f"{builder.name}:{builder.builder_config.name}", spec=spec,
        catalog=ItemCatalog(side_features=side), interactions=interactions,
        train_requests=train.astype(np.int64), eval_requests=evaluation.astype(np.int64),
        user_features={n: data["user_features"][:, i] for i, n in enumerate(user_names)},
        info={"format": meta["format"], "split": split, "cutoff": cutoff, "request_gap_seconds": gap,
              "max_request_size": max_size, "bad_rows": dict(meta["bad_rows"]),
              "side_files": dict(meta.get("side_files", {})),
              "duplicate_rows": int(meta.get("duplicate_rows", 0)),
              "drop_duplicates": bool(meta.get("drop_duplicates")),
              "side_feature_names": tuple(meta["side_feature_names"]),
              "user_vocab_sizes": dict(zip(user_names, meta["user_vocab_sizes"])),
              "prepared_dir": str(builder.data_dir)},
    )
    dataset.validate()
    return dataset
