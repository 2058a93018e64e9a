"""KuaiRand (Kuaishou short-video feed logs) as a ranking log: `GenrankKuairand`, configs pure, 1k, 27k.

Files, read from `manual_dir` (or its `data/` subfolder, as the KuaiRand archives unpack), with
<s> = pure | 1k | 27k; each log may also come split into `<name>_part1.csv`, `_part2.csv`, ...:
  log_standard_4_08_to_4_21_<s>.csv, log_standard_4_22_to_5_08_<s>.csv, log_random_4_22_to_5_08_<s>.csv
  user_features_<s>.csv, video_features_basic_<s>.csv
Exposure = one log row. Actions: click, like, follow, comment, forward, hate, long_view (the
  `is_*` / `long_view` flags). Per-exposure extras: is_rand (1 = the video was inserted at random:
  evaluate on these for unbiased estimates), tab, play_time_ms, duration_ms.
Item side features (categorical; 0 = missing): video_type, upload_type, visible_status,
  music_type, tag (first listed tag), duration_bucket (1 + floor(log2(1 + seconds)), capped at 15).
User features: user_active_degree, is_lowactive_period, is_live_streamer, is_video_author and the
  follow/fans/friend/register-days range columns.
Requests: the logs carry no page boundaries, so the loader approximates a feed request as
  exposures without a pause over 60 s, cut every 16 exposures.
"""

from __future__ import annotations

import pathlib

import numpy as np
import tensorflow_datasets as tfds

from genrank_jax.data.builders.log_builder import LogBuilder, ParsedLog
from genrank_jax.data.builders.rows import (
    BadRows,
    MissingFileError,
    binary,
    dense_codes,
    integer,
    non_negative_id,
    read_table,
    require_file,
    timestamp_within,
)

WHERE = "KuaiRand comes from https://kuairand.com/ (unzip it and pass the folder as data_dir / manual_dir)"
LOGS = ("log_standard_4_08_to_4_21", "log_standard_4_22_to_5_08", "log_random_4_22_to_5_08")
ACTION_COLUMNS = ("is_click", "is_like", "is_follow", "is_comment", "is_forward", "is_hate", "long_view")
SIDE_COLUMNS = ("video_type", "upload_type", "visible_status", "music_type", "tag")
USER_COLUMNS = ("user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
                "follow_user_num_range", "fans_user_num_range", "friend_user_num_range", "register_days_range")
DURATION_BUCKETS = 16
# The logs' file names give the period: April 8 to May 8, 2022 (Beijing dates)
FIRST_DAY, LAST_DAY = "2022-04-08", "2022-05-08"


def _optional_float(text: str) -> float:
    return float(text) if text.strip() else 0.0


def duration_bucket(duration_ms: np.ndarray) -> np.ndarray:
    """0 for unknown (<= 0), else 1 + floor(log2(1 + seconds)) capped at DURATION_BUCKETS - 1."""
    seconds = np.maximum(duration_ms, 0) / 1000.0
    bucket = np.minimum(1 + np.floor(np.log2(1.0 + seconds)), DURATION_BUCKETS - 1)
    return np.where(duration_ms > 0, bucket, 0).astype(np.int32)


class GenrankKuairand(LogBuilder):
    """KuaiRand feed exposures with seven engagement actions and the is_rand flag, one record per user."""

    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name, description=f"KuaiRand-{name}")
                       for name in ("pure", "1k", "27k")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = WHERE
    ACTION_NAMES = ("click", "like", "follow", "comment", "forward", "hate", "long_view")
    SIDE_FEATURE_NAMES = (*SIDE_COLUMNS, "duration_bucket")
    EXTRAS = {"is_rand": np.uint8, "tab": np.int32, "play_time_ms": np.int64, "duration_ms": np.int64}
    HOMEPAGE = "https://kuairand.com/"
    DEFAULT_REQUEST_GAP_SECONDS = 60.0
    DEFAULT_MAX_REQUEST_SIZE = 16

    @classmethod
    def user_feature_names(cls, config_name: str) -> tuple[str, ...]:
        return USER_COLUMNS

    @classmethod
    def locate(cls, config_name: str, manual_dir: pathlib.Path) -> dict[str, list[pathlib.Path]]:
        """role -> paths: "logs" (every log file or part), "users", "videos"; MissingFileError if absent."""
        archive = {"pure": "KuaiRand-Pure", "1k": "KuaiRand-1K", "27k": "KuaiRand-27K"}[config_name]
        subdirs = ("data", f"{archive}/data")
        folders = (manual_dir, *(manual_dir / sub for sub in subdirs))
        logs = []
        for stem in LOGS:
            name = f"{stem}_{config_name}.csv"
            for folder in folders:
                found = ([folder / name] if (folder / name).is_file()
                         else sorted(folder.glob(f"{stem}_{config_name}_part*.csv")))
                if found:
                    logs += found  # part order does not matter: rows are sorted by time later
                    break
            else:
                raise MissingFileError(f"{name} not found (looked in {', '.join(map(str, folders))}); {WHERE}")
        return {"logs": logs,
                "users": [require_file(manual_dir, f"user_features_{config_name}.csv", subdirs=subdirs, source=WHERE)],
                "videos": [require_file(manual_dir, f"video_features_basic_{config_name}.csv", subdirs=subdirs,
                                        source=WHERE)]}

    @classmethod
    def input_files(cls, config_name: str, manual_dir: pathlib.Path) -> list[pathlib.Path]:
        return [p for paths in cls.locate(config_name, pathlib.Path(manual_dir)).values() for p in paths]

    def _read(self, manual_dir: pathlib.Path, bad: BadRows) -> ParsedLog:
        paths = self.locate(self.builder_config.name, manual_dir)
        time_ms = timestamp_within(FIRST_DAY, LAST_DAY, f"kuairand:{self.builder_config.name}", unit=1e-3)
        columns = {"user_id": non_negative_id, "video_id": non_negative_id, "time_ms": time_ms, "is_rand": binary,
                   "tab": integer, "play_time_ms": _optional_float, "duration_ms": _optional_float,
                   **{name: binary for name in ACTION_COLUMNS}}
        tables = [read_table(path, columns, sep=",", header=True, bad=bad) for path in paths["logs"]]
        log = {key: np.concatenate([np.asarray(t[key]) for t in tables]) for key in columns}

        videos = read_table(paths["videos"][0], {"video_id": non_negative_id, "video_duration": _optional_float,
                                                  **{name: str for name in SIDE_COLUMNS}},
                            sep=",", header=True, bad=bad)
        side, side_vocab = [], []
        for name in SIDE_COLUMNS:
            values = videos[name]
            if name == "tag":  # a comma-separated tag list; keep the first (a categorical holds one value)
                values = [v.split(",")[0].strip() for v in values]
            codes, size = dense_codes([v.strip() for v in values])
            side.append(codes)
            side_vocab.append(size)
        side.append(duration_bucket(np.asarray(videos["video_duration"], np.float64)))
        side_vocab.append(DURATION_BUCKETS)

        users = read_table(paths["users"][0], {"user_id": non_negative_id, **{name: str for name in USER_COLUMNS}},
                           sep=",", header=True, bad=bad)
        user_codes = [dense_codes([v.strip() for v in users[name]]) for name in USER_COLUMNS]

        num_users = len(users["user_id"])
        return ParsedLog(
            user_raw=log["user_id"].astype(np.int64), item_raw=log["video_id"].astype(np.int64),
            timestamps=log["time_ms"].astype(np.float64) / 1000.0,
            actions=np.stack([log[name] for name in ACTION_COLUMNS], axis=1).astype(np.uint8),
            extras={name: log[name] for name in self.EXTRAS},
            item_table_raw=np.asarray(videos["video_id"], np.int64),
            item_side=np.stack(side, axis=1).reshape(-1, len(self.SIDE_FEATURE_NAMES)),
            side_vocab_sizes=tuple(side_vocab),
            user_table_raw=np.asarray(users["user_id"], np.int64),
            user_table=np.stack([c for c, _ in user_codes], axis=1).reshape(num_users, len(USER_COLUMNS)),
            user_vocab_sizes=tuple(size for _, size in user_codes),
            file_format=f"kuairand-{self.builder_config.name}",
            side_files={"items": paths["videos"][0], "users": paths["users"][0]},
        )
