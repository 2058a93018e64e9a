"""A data source checked without writing anything: what `--dry-run` reports about `--data`.

`preview_source` raises what `load_dataset` would raise for a source it cannot read (an unknown
name, a missing folder or file, a bad schema, a binary file, a first batch of a log that does not
match its schema) and otherwise says what it found. It never prepares anything: preparing writes
the TFDS cache and, for a large log, takes minutes. So the whole dataset (which the model's size,
the step count and the defaults depend on) comes with the preview only when it loads without
writing: the simulator, a MovieLens or KuaiRand log an earlier run prepared, an own log an earlier
run prepared and loaded with the same options. Otherwise the preview has checked:
- a `log:PATH`: the schema file, the log's files and the first record batch (up to about 10^6
  rows), through the reader the preparation uses (the same errors);
- MovieLens and KuaiRand: that the raw files are there (the same errors) and are text; their rows
  are parsed when the first real run prepares them.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

from genrank_jax.data.schema import RankingDataset


@dataclasses.dataclass
class SourcePreview:
    """dataset: the whole dataset when it loads without writing, else None; lines: what was checked."""

    dataset: RankingDataset | None
    lines: list[str]


def _size(paths: list[pathlib.Path]) -> str:
    total = sum(p.stat().st_size for p in paths)
    return f"{total / 2**20:,.1f} MiB" if total >= 2**20 else f"{total / 2**10:,.1f} KiB"


def _prepared(builder) -> bool:
    """builder.is_prepared(), without TFDS's warning about a folder that does not exist yet."""
    return (pathlib.Path(str(builder.data_path)) / "dataset_info.json").is_file() and builder.is_prepared()


def describe(dataset: RankingDataset) -> str:
    spec = dataset.spec
    return (f"{dataset.interactions.num_exposures:,} exposures, {spec.num_users:,} users, {spec.num_items:,} items, "
            f"actions {', '.join(spec.action_names)}; {len(dataset.train_requests):,} train / "
            f"{len(dataset.eval_requests):,} eval requests")


def preview_source(source: str, *, data_dir: str | os.PathLike | None = None, schema=None,
                   split: str = "temporal", seed: int = 0, skip_bad_rows: bool = False,
                   drop_duplicates: bool = False) -> SourcePreview:
    """Check `source` as `load_dataset` would read it, writing nothing (see the module docstring)."""
    from genrank_jax.data.sources import REAL_CONFIGS, SourceError, _builder_class, check_source, load_dataset

    check_source(source)
    name, _, config = source.partition(":")
    if name == "log":
        return _preview_log(config, schema, split=split, skip_bad_rows=skip_bad_rows, drop_duplicates=drop_duplicates)
    if schema is not None:
        raise SourceError(f"a schema file describes a log:PATH source, not {source}")
    if name == "synthetic":
        dataset = load_dataset(source, seed=seed)  # generated in memory: nothing to write
        return SourcePreview(dataset, [f"data: {source} (the feed simulator, seed {seed}): {describe(dataset)}"])
    assert name in REAL_CONFIGS
    if data_dir is None:
        load_dataset(source)  # the same SourceError as the run (names the files and --data-dir)
    from genrank_jax.data.builders.rows import check_text_file
    from genrank_jax.data.loading import cached_builder, load_prepared

    builder_cls = _builder_class(name)
    manual_dir = pathlib.Path(data_dir).expanduser()
    builder = cached_builder(builder_cls, config, manual_dir, skip_bad_rows=skip_bad_rows,
                             drop_duplicates=drop_duplicates)  # MissingFileError as the run gives it
    files = builder_cls.input_files(config, manual_dir)
    if _prepared(builder):
        dataset = load_prepared(builder, name=source, split=split)
        return SourcePreview(dataset, [f"data: {source}, prepared in {builder.data_dir}: {describe(dataset)}"])
    for path in files:
        check_text_file(path)
    return SourcePreview(None, [
        f"data: {source} from {', '.join(p.name for p in files)} in {manual_dir} ({_size(files)}), text; not prepared "
        f"yet: the run parses every row and caches the result in {pathlib.Path(builder.data_dir).parent} first "
        "(rows are checked then)"])


def _preview_log(path: str, schema, *, split: str, skip_bad_rows: bool, drop_duplicates: bool) -> SourcePreview:
    from genrank_jax.data.builders.rows import BadRows
    from genrank_jax.data.own_log import memory_mapped
    from genrank_jax.data.own_log.loading import as_schema, load_options, loaded_folder, log_builder
    from genrank_jax.data.own_log.reader import log_files, read_chunks

    schema = as_schema(schema)  # the schema's own errors first, as load_log gives them
    files = log_files(path)
    if split not in ("temporal", "last_request"):
        raise ValueError(f"split must be 'temporal' or 'last_request', got {split!r}")
    bad = BadRows(skip=skip_bad_rows)
    first = next(read_chunks(files, schema, bad))  # DataError for a log without rows, as the run gives it
    skipped = sum(bad.counts.values())
    described = f"; schema {schema.path}" if schema.path is not None else ""
    lines = [f"data: log:{path}, {len(files)} file(s), {_size(files)}{described} (actions "
             f"{', '.join(schema.action_names)})",
             f"first batch: {len(first):,} rows read and checked against the schema"
             + (f" ({skipped:,} malformed rows skipped)" if skipped else "")]
    builder = log_builder(path, schema, skip_bad_rows=skip_bad_rows, drop_duplicates=drop_duplicates)
    if _prepared(builder):
        folder = loaded_folder(builder, schema, load_options(path, split=split))
        dataset = memory_mapped.load(folder)
        if dataset is not None:
            lines.append(f"prepared and loaded before ({folder}): {describe(dataset)}")
            return SourcePreview(dataset, lines)
        lines.append(f"prepared in {builder.data_dir}; the run builds the vocabulary and splits first")
    else:
        lines.append(f"not prepared yet: the run reads every row and writes records under "
                     f"{pathlib.Path(builder.data_dir).parent} first")
    return SourcePreview(None, lines)
