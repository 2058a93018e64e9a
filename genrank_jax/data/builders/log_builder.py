"""The shared TFDS builder of interaction logs: one record per user, written as array_record.

A record holds one user's exposures sorted by (timestamp, item): item ids, integer millisecond
timestamps (TFDS stores floats as float32, far too coarse for Unix times), actions,
each exposure's item side features (denormalized, so the loader rebuilds the catalog from the
records alone), the user's categorical features, and source-specific per-exposure extras.
User and item ids are dense, [0, n) in the order of the sorted raw ids of the users/items that
appear in the log (deterministic; items never exposed are left out: they can never be a
candidate). Vocabularies and counts go to `info.metadata`, with the number of skipped rows.

Subclasses read their raw files into a `ParsedLog`; nothing is downloaded (files come from
`manual_dir`). Side files (item and user tables) are matched to the log's ids: the share of the
log's ids each covers is logged and kept in `info["side_files"]`; a file covering under half of
them is refused (DataError naming it and the rate), as is a log whose user and item columns look
swapped.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core.utils import py_utils

from genrank_jax.data.builders.rows import BadRows, DataError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ParsedLog:
    """Raw log columns as read from a source's files (E exposures, I' items, U' users with features).

    user_raw, item_raw: [E] int64 raw ids; timestamps: [E] float64 seconds; actions: [E, A] uint8;
    extras: name -> [E] per-exposure column. item_table_raw: [I'] int64 with item_side [I', F] int32
    (codes, 0 = missing); user_table_raw: [U'] int64 with user_table [U', G] int32.
    """

    user_raw: np.ndarray
    item_raw: np.ndarray
    timestamps: np.ndarray
    actions: np.ndarray
    extras: dict[str, np.ndarray]
    item_table_raw: np.ndarray
    item_side: np.ndarray
    side_vocab_sizes: tuple[int, ...]
    user_table_raw: np.ndarray
    user_table: np.ndarray
    user_vocab_sizes: tuple[int, ...]
    file_format: str
    # role ("items", "users") -> the side file its table was read from; a role absent: no file
    side_files: dict[str, pathlib.Path] = dataclasses.field(default_factory=dict)


def duplicate_rows(columns: list[np.ndarray]) -> np.ndarray:
    """[E] bool: True for a row equal in every column to an earlier row (the first copy stays False)."""
    flat = [c.reshape(len(c), -1) for c in columns]
    keys = [column[:, j] for column in flat for j in range(column.shape[1])]
    rows = len(columns[0])
    duplicate = np.zeros(rows, bool)
    if rows < 2:
        return duplicate
    order = np.lexsort(keys[::-1])  # stable: equal rows keep file order, so the later copy is flagged
    same = np.ones(rows - 1, bool)
    for key in keys:
        ordered = key[order]
        same &= ordered[1:] == ordered[:-1]
    duplicate[order[1:][same]] = True
    return duplicate


def lookup_rows(table_raw: np.ndarray, table: np.ndarray, raw_ids: np.ndarray) -> np.ndarray:
    """Rows of `table` for `raw_ids` (matched on table_raw); zeros (missing codes) where absent."""
    out = np.zeros((len(raw_ids), table.shape[1]), np.int32)
    if len(table_raw) == 0:
        return out
    order = np.argsort(table_raw, kind="stable")
    sorted_raw = table_raw[order]
    at = np.minimum(np.searchsorted(sorted_raw, raw_ids), len(sorted_raw) - 1)
    found = sorted_raw[at] == raw_ids
    out[found] = table[order[at[found]]]
    return out


# A side file whose ids match under this share of the log's is another dataset's (or read wrong):
# refused. Real MovieLens and KuaiRand tables cover every id; below WARN_MATCH a warning names it.
MIN_MATCH, WARN_MATCH = 0.5, 0.9


def match_rate(log_ids: np.ndarray, table_raw: np.ndarray) -> float:
    """Share of the distinct `log_ids` that have a row in a side table keyed by `table_raw`."""
    return float(np.isin(log_ids, table_raw).mean()) if len(log_ids) else 1.0


def check_side_files(parsed: ParsedLog, users: np.ndarray, items: np.ndarray) -> dict:
    """{role: {"file", "match_rate"}} of the side files read; DataError for a file whose ids mostly
    do not match the log's, or when the log's user and item columns look swapped."""
    tables = {"users": (users, parsed.user_table_raw), "items": (items, parsed.item_table_raw)}
    rates = {role: match_rate(tables[role][0], tables[role][1]) for role in parsed.side_files}
    if len(rates) == 2 and min(rates.values()) < WARN_MATCH and (
            match_rate(users, parsed.item_table_raw) >= 0.99 and match_rate(items, parsed.user_table_raw) >= 0.99):
        raise DataError(f"the {parsed.file_format} log's user and item columns look swapped: {rates['users']:.0%} of "
                        f"its {len(users):,} users are in {parsed.side_files['users'].name} and {rates['items']:.0%} "
                        f"of its {len(items):,} items in {parsed.side_files['items'].name}, but its user ids are all "
                        f"item ids of {parsed.side_files['items'].name} and its item ids all user ids of "
                        f"{parsed.side_files['users'].name}")
    report = {}
    for role, rate in rates.items():
        path, count = parsed.side_files[role], len(tables[role][0])
        report[role] = {"file": str(path), "match_rate": rate}
        if rate < MIN_MATCH:
            raise DataError(f"{path}: only {rate:.1%} of the log's {count:,} {role} have a row in it (at least "
                            f"{MIN_MATCH:.0%} must): it is not this log's {role[:-1]} table")
        level = logging.WARNING if rate < WARN_MATCH else logging.INFO
        log.log(level, "%s: %.1f%% of the log's %d %s have a row (the rest get missing features)", path,
                100 * rate, count, role)
    return report


class LogBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the log builders. Subclasses set the class constants and implement `_read`.

    Constructor: `manual_dir` (where the raw files are; or DownloadConfig(manual_dir=...)),
    `skip_bad_rows` (skip and count malformed rows instead of raising), `drop_duplicates` (drop
    exact duplicate log rows; kept by default, counted either way), plus TFDS's `data_dir`/`config`.
    """

    VERSION = tfds.core.Version("1.0.0")
    ACTION_NAMES: tuple[str, ...] = ()
    SIDE_FEATURE_NAMES: tuple[str, ...] = ()
    EXTRAS: dict[str, type] = {}
    HOMEPAGE = ""
    # How the loader groups exposures into requests unless told otherwise.
    DEFAULT_REQUEST_GAP_SECONDS = 1800.0
    DEFAULT_MAX_REQUEST_SIZE: int | None = None

    def __init__(self, *, manual_dir: str | pathlib.Path | None = None, skip_bad_rows: bool = False,
                 drop_duplicates: bool = False, **kwargs):
        self._manual_dir = None if manual_dir is None else pathlib.Path(manual_dir).expanduser()
        self._skip_bad_rows = skip_bad_rows
        self._drop_duplicates = drop_duplicates
        super().__init__(**kwargs)

    @py_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's own lookup goes through importlib_resources for installed packages, which this
        # environment lacks (and which TFDS does not require); the defining file is what it wants.
        return epath.Path(inspect.getfile(cls))

    # TFDS prints "Downloading and preparing dataset ..." and "... downloaded and prepared": nothing
    # is downloaded here, so say what happens instead (stdout, once, before the slow part)
    def _log_download_bytes(self) -> None:
        print(f"preparing {self.name} from local files into {self.data_dir} (once: later runs reuse it)", flush=True)

    def _log_download_done(self) -> None:
        log.info("prepared %s in %s", self.name, self.data_dir)

    # --- for subclasses ---------------------------------------------------------------------
    @classmethod
    def user_feature_names(cls, config_name: str) -> tuple[str, ...]:
        """Categorical user features the config's files carry (the record's user_features order)."""
        return ()

    @classmethod
    def input_files(cls, config_name: str, manual_dir: pathlib.Path) -> list[pathlib.Path]:
        """The raw files a build of this config reads; MissingFileError naming the first absent one."""
        raise NotImplementedError

    def _read(self, manual_dir: pathlib.Path, bad: BadRows) -> ParsedLog:
        raise NotImplementedError

    # --- TFDS -------------------------------------------------------------------------------
    def _info(self) -> tfds.core.DatasetInfo:
        per_exposure = lambda dtype, *rest: tfds.features.Tensor(shape=(None, *rest), dtype=dtype)
        num_user_features = len(self.user_feature_names(self.builder_config.name))
        features = tfds.features.FeaturesDict({
            "user": np.int64,
            "item_ids": per_exposure(np.int64),
            # tf.train.Example stores floats as float32 (2-minute steps at Unix times): keep integer ms
            "timestamp_ms": per_exposure(np.int64),
            "actions": per_exposure(np.uint8, len(self.ACTION_NAMES)),
            "item_side": per_exposure(np.int32, len(self.SIDE_FEATURE_NAMES)),
            "user_features": tfds.features.Tensor(shape=(num_user_features,), dtype=np.int32),
            "extras": tfds.features.FeaturesDict({name: per_exposure(dtype) for name, dtype in self.EXTRAS.items()}),
        })
        return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=features,
                                     homepage=self.HOMEPAGE, metadata=tfds.core.MetadataDict())

    def _manual_path(self, dl_manager) -> pathlib.Path:
        if self._manual_dir is not None:
            return self._manual_dir
        return pathlib.Path(str(dl_manager.manual_dir))

    def _split_generators(self, dl_manager):
        # One split holds every user; train/eval is decided at load time (loading.py), so changing
        # the split rule never rebuilds the dataset.
        return {"train": self._generate_examples(self._manual_path(dl_manager))}

    def _generate_examples(self, manual_dir: pathlib.Path):
        bad = BadRows(skip=self._skip_bad_rows)
        parsed = self._read(manual_dir, bad)
        bad.summarize()
        duplicate = duplicate_rows([parsed.user_raw, parsed.item_raw, parsed.timestamps, parsed.actions,
                                    *parsed.extras.values()])
        num_duplicates = int(duplicate.sum())
        if num_duplicates:
            log.warning("%d exact duplicate rows in the %s log: %s", num_duplicates, parsed.file_format,
                        "dropped" if self._drop_duplicates else "kept")
        if self._drop_duplicates and num_duplicates:
            keep = ~duplicate
            parsed = dataclasses.replace(
                parsed, user_raw=parsed.user_raw[keep], item_raw=parsed.item_raw[keep],
                timestamps=parsed.timestamps[keep], actions=parsed.actions[keep],
                extras={name: column[keep] for name, column in parsed.extras.items()})
        users, user_ids = np.unique(parsed.user_raw, return_inverse=True)
        items, item_ids = np.unique(parsed.item_raw, return_inverse=True)
        side_files = check_side_files(parsed, users, items)
        item_side = lookup_rows(parsed.item_table_raw, parsed.item_side, items)
        user_table = lookup_rows(parsed.user_table_raw, parsed.user_table, users)
        # ties in time are common (ml-100k rates many movies in the same second): item id breaks them
        order = np.lexsort((item_ids, parsed.timestamps, user_ids))
        user_ids, item_ids = user_ids[order], item_ids[order]
        timestamps, actions = parsed.timestamps[order], parsed.actions[order]
        extras = {name: parsed.extras[name][order].astype(dtype) for name, dtype in self.EXTRAS.items()}
        self.info.metadata.update({
            "format": parsed.file_format,
            "num_users": int(len(users)),
            "num_items": int(len(items)),
            "num_exposures": int(len(order)),
            "action_names": list(self.ACTION_NAMES),
            "side_feature_names": list(self.SIDE_FEATURE_NAMES),
            "side_vocab_sizes": [int(s) for s in parsed.side_vocab_sizes],
            "user_feature_names": list(self.user_feature_names(self.builder_config.name)),
            "user_vocab_sizes": [int(s) for s in parsed.user_vocab_sizes],
            "bad_rows": dict(bad.counts),
            "side_files": side_files,
            "duplicate_rows": num_duplicates,
            "drop_duplicates": bool(self._drop_duplicates),
            "default_request_gap_seconds": self.DEFAULT_REQUEST_GAP_SECONDS,
            "default_max_request_size": self.DEFAULT_MAX_REQUEST_SIZE,
        })
        bounds = np.flatnonzero(np.diff(user_ids)) + 1
        for rows in np.split(np.arange(len(order)), bounds) if len(order) else []:
            user = int(user_ids[rows[0]])
            yield user, {
                "user": user,
                "item_ids": item_ids[rows].astype(np.int64),
                "timestamp_ms": np.round(timestamps[rows] * 1000.0).astype(np.int64),
                "actions": actions[rows].astype(np.uint8),
                "item_side": item_side[item_ids[rows]],
                "user_features": user_table[user],
                "extras": {name: column[rows] for name, column in extras.items()},
            }
