"""One entry point for every dataset: `load_dataset("movielens:100k", data_dir=...)`.

Sources: "synthetic" (= "synthetic:default"), "synthetic:tests", "synthetic:feed", "synthetic:benchmark" (the
simulator, genrank_jax.data.synthetic), "movielens:100k|1m|20m|32m|latest-small" and "kuairand:pure|1k|27k"
(TFDS builders over files the user downloaded; nothing is fetched), and "log:PATH", a user's own
Parquet/CSV log described by a schema file (genrank_jax/data/own_log).
"""

from __future__ import annotations

import os

from genrank_jax.data.schema import RankingDataset
from genrank_jax.errors import GenRankError

SYNTHETIC_PRESETS = ("tests", "default", "feed", "benchmark")
REAL_CONFIGS = {"movielens": ("100k", "1m", "20m", "32m", "latest-small"), "kuairand": ("pure", "1k", "27k")}
KNOWN_SOURCES = ("synthetic", *(f"synthetic:{p}" for p in SYNTHETIC_PRESETS),
                 *(f"{name}:{config}" for name, configs in REAL_CONFIGS.items() for config in configs))
# What data_dir must hold for each real source (the builders' docstrings have the details).
RAW_FILES = {
    "movielens": "GroupLens u.data/u.item/u.user (100k), ratings.dat/movies.dat/users.dat (1m), "
                 "ratings.csv/movies.csv (20m, 32m, latest-small), or RecBole ml-<size>.inter/.item/.user; "
                 "from https://grouplens.org/datasets/movielens/",
    "kuairand": "log_standard_4_08_to_4_21_<s>.csv, log_standard_4_22_to_5_08_<s>.csv, "
                "log_random_4_22_to_5_08_<s>.csv, user_features_<s>.csv, video_features_basic_<s>.csv "
                "(<s> = pure, 1k or 27k; the folder or its data/ subfolder); from https://kuairand.com/",
}


class SourceError(GenRankError, ValueError):
    """A source name load_dataset does not know, or a real source without its data_dir."""


def check_source(source: str) -> None:
    """SourceError listing the known sources unless `source` is one of them (or log:PATH)."""
    if source.startswith("log:"):
        if not source[4:]:
            raise SourceError("log: needs the log's path, e.g. log:exposures.parquet (a file or a folder)")
        return
    if source not in KNOWN_SOURCES:
        raise SourceError(f"unknown source {source!r}; known sources: {', '.join(KNOWN_SOURCES)}, log:PATH")


def _builder_class(name: str):
    # Imported on demand: TFDS is slow to import and the simulator does not need it.
    if name == "movielens":
        from genrank_jax.data.builders.movielens import GenrankMovielens
        return GenrankMovielens
    from genrank_jax.data.builders.kuairand import GenrankKuairand
    return GenrankKuairand


def load_dataset(source: str, *, data_dir: str | os.PathLike | None = None, split: str = "temporal",
                 seed: int = 0, skip_bad_rows: bool = False, drop_duplicates: bool = False,
                 schema: str | os.PathLike | None = None, **options) -> RankingDataset:
    """Load `source` as a validated RankingDataset.

    data_dir: the folder holding the raw files (TFDS's manual_dir); required for real sources.
    split: "temporal" or "last_request" (real sources; the simulator keeps its own split).
    seed: the simulator's seed (real datasets are deterministic and do not use it).
    skip_bad_rows: skip malformed rows (counted in `dataset.info["bad_rows"]`) instead of raising.
    drop_duplicates: drop exact duplicate rows of the raw log; kept by default. Either way they are
      counted in `dataset.info["duplicate_rows"]` (and logged); `data_report` says both.
    schema: the schema file (or a LogSchema) of a "log:PATH" source; required for it, refused otherwise.
    options: for the simulator, SimulatorConfig field overrides; for real sources, `tfds_dir`
      (prepared-data cache, default $GENRANK_TFDS_DIR or ~/.cache/genrank_jax/tfds) and the
      `load_prepared` options (cutoff, train_fraction, request_gap_seconds, max_request_size).
    """
    check_source(source)
    name, _, config = source.partition(":")
    if name == "log":
        from genrank_jax.data.own_log import load_log
        return load_log(config, schema, split=split, skip_bad_rows=skip_bad_rows, drop_duplicates=drop_duplicates,
                        **options)
    if schema is not None:
        raise SourceError(f"a schema file describes a log:PATH source, not {source}")
    if name == "synthetic":
        from genrank_jax.data.synthetic import SimulatorConfig, simulate
        return simulate(SimulatorConfig.preset(config or "default", seed=seed, **options)).dataset
    if data_dir is None:
        raise SourceError(f"{source} reads files you downloaded: {RAW_FILES[name]}",
                           hint="pass data_dir=<folder holding them>", cli_hint="pass --data-dir <folder holding them>")
    from genrank_jax.data.loading import load_prepared, prepare
    tfds_dir = options.pop("tfds_dir", None)
    builder = prepare(_builder_class(name), config, data_dir, tfds_dir=tfds_dir, skip_bad_rows=skip_bad_rows,
                      drop_duplicates=drop_duplicates)
    return load_prepared(builder, name=source, split=split, **options)


def data_report(dataset: RankingDataset) -> list[str]:
    """Lines saying what the loader skipped or found twice (none for a clean or simulated log)."""
    lines = [f"skipped {count:,} malformed rows of {name}" for name, count in dataset.info.get("bad_rows", {}).items()]
    duplicates = dataset.info.get("duplicate_rows", 0)
    if duplicates:
        fate = "dropped" if dataset.info.get("drop_duplicates") else "kept (--drop-duplicates drops them)"
        lines.append(f"{duplicates:,} exact duplicate rows in the raw log: {fate}")
    return lines
