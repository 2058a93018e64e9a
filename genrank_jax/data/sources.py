"""One entry point for every dataset: `load_dataset("movielens:100k", data_dir=...)`.

Sources: "synthetic" (= "synthetic:default"), "synthetic:tests", "synthetic:benchmark" (the
simulator, genrank_jax.data.synthetic), "movielens:100k|1m|20m|32m" and "kuairand:pure|1k|27k"
(TFDS builders over files the user downloaded; nothing is fetched).
"""

from __future__ import annotations

import os

from genrank_jax.data.schema import RankingDataset

SYNTHETIC_PRESETS = ("tests", "default", "benchmark")
REAL_CONFIGS = {"movielens": ("100k", "1m", "20m", "32m"), "kuairand": ("pure", "1k", "27k")}
KNOWN_SOURCES = ("synthetic", *(f"synthetic:{p}" for p in SYNTHETIC_PRESETS),
                 *(f"{name}:{config}" for name, configs in REAL_CONFIGS.items() for config in configs))


def _builder_class(name: str):
    # Imported on demand: TFDS is slow to import and the simulator does not need it.
    if name == "movielens":
        from genrank_jax.data.builders.movielens import GenrankMovielens
        return GenrankMovielens
    from genrank_jax.data.builders.kuairand import GenrankKuairand
    return GenrankKuairand


def load_dataset(source: str, *, data_dir: str | os.PathLike | None = None, split: str = "temporal",
                 seed: int = 0, skip_bad_rows: bool = False, **options) -> RankingDataset:
    """Load `source` as a validated RankingDataset.

    data_dir: the folder holding the raw files (TFDS's manual_dir); required for real sources.
    split: "temporal" or "last_request" (real sources; the simulator keeps its own split).
    seed: the simulator's seed (real datasets are deterministic and do not use it).
    skip_bad_rows: skip malformed rows (counted in `dataset.info["bad_rows"]`) instead of raising.
    options: for the simulator, SimulatorConfig field overrides; for real sources, `tfds_dir`
      (prepared-data cache, default $GENRANK_TFDS_DIR or ~/.cache/genrank_jax/tfds) and the
      `load_prepared` options (cutoff, train_fraction, request_gap_seconds, max_request_size).
    """
    if source not in KNOWN_SOURCES:
        raise ValueError(f"unknown source {source!r}; known sources: {', '.join(KNOWN_SOURCES)}")
    name, _, config = source.partition(":")
    if name == "synthetic":
        from genrank_jax.data.synthetic import SimulatorConfig, simulate
        return simulate(SimulatorConfig.preset(config or "default", seed=seed, **options)).dataset
    if data_dir is None:
        raise ValueError(f"{source} reads files you downloaded: pass data_dir=<folder holding them> "
                         f"({_builder_class(name).MANUAL_DOWNLOAD_INSTRUCTIONS})")
    from genrank_jax.data.loading import load_prepared, prepare
    tfds_dir = options.pop("tfds_dir", None)
    builder = prepare(_builder_class(name), config, data_dir, tfds_dir=tfds_dir, skip_bad_rows=skip_bad_rows)
    return load_prepared(builder, name=source, split=split, **options)
