"""A loaded RankingDataset as one .npz file, for machines without tensorflow-datasets.

    python bench/prepared_data.py --data movielens:100k --data-dir ../shared/data/ml-100k --out ml-100k.npz

The lent GPU machine has jax but no TFDS, so MovieLens cannot be prepared there; the arrays are
prepared here and read back with `load` (`bench/ablation.py --prepared FILE`). Arrays are stored
by their path in the dataclass tree, everything else (sizes, names, provenance) as one JSON entry:
no pickle, so numpy 1 and 2 read the same file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib

import numpy as np

from genrank_jax.data.schema import FeatureSpec, Interactions, ItemCatalog, RankingDataset

PARTS = {"catalog": ItemCatalog, "interactions": Interactions}


def _split(prefix: str, value, arrays: dict, scalars: dict) -> None:
    if isinstance(value, np.ndarray):
        arrays[prefix] = value
    elif isinstance(value, dict) or (hasattr(value, "items") and not dataclasses.is_dataclass(value)):
        scalars[prefix] = {"__mapping__": sorted(value)}
        for key, item in value.items():
            _split(f"{prefix}/{key}", item, arrays, scalars)
    else:
        scalars[prefix] = value


def save(dataset: RankingDataset, path: pathlib.Path) -> None:
    if dataset.vocabulary is not None:
        raise SystemExit("a dataset with a raw-id vocabulary (an own log) is not stored here: use its prepared folder")
    arrays, scalars = {}, {"spec": dataclasses.asdict(dataset.spec)}
    for field in dataclasses.fields(RankingDataset):
        value = getattr(dataset, field.name)
        if field.name in ("spec", "vocabulary"):
            continue
        if field.name in PARTS:
            for part in dataclasses.fields(PARTS[field.name]):
                _split(f"{field.name}.{part.name}", getattr(value, part.name), arrays, scalars)
        else:
            _split(field.name, value, arrays, scalars)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, __scalars__=np.asarray(json.dumps(scalars, default=str)), **arrays)


def _join(prefix: str, arrays, scalars: dict):
    if prefix in arrays:
        return arrays[prefix]
    value = scalars.get(prefix)
    if isinstance(value, dict) and "__mapping__" in value:
        return {key: _join(f"{prefix}/{key}", arrays, scalars) for key in value["__mapping__"]}
    return value


def load(path: str | pathlib.Path) -> RankingDataset:
    with np.load(path, allow_pickle=False) as stored:
        arrays = {key: stored[key] for key in stored.files if key != "__scalars__"}
        scalars = json.loads(str(stored["__scalars__"]))
    spec = scalars.pop("spec")
    spec = FeatureSpec(**{**spec, "action_names": tuple(spec["action_names"]),
                          "side_vocab_sizes": tuple(spec["side_vocab_sizes"])})
    fields = {"spec": spec}
    for field in dataclasses.fields(RankingDataset):
        if field.name in ("spec", "vocabulary"):
            continue
        if field.name in PARTS:
            fields[field.name] = PARTS[field.name](**{
                part.name: _join(f"{field.name}.{part.name}", arrays, scalars)
                for part in dataclasses.fields(PARTS[field.name])})
        else:
            fields[field.name] = _join(field.name, arrays, scalars)
    return RankingDataset(**fields)


def main(argv=None) -> None:
    from genrank_jax.data.sources import load_dataset

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", required=True, type=pathlib.Path)
    args = parser.parse_args(argv)
    save(load_dataset(args.data, data_dir=args.data_dir), args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
