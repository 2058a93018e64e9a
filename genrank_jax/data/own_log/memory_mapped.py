"""A loaded log's arrays saved once as .npy files and memory-mapped by every later load.

Turning the records into a dataset (a sort, the split, the vocabulary) costs a minute per 10^7
rows; a second load with the same options maps the saved arrays instead. Mapped arrays live in
the page cache, shared by every process on the machine: two training processes of one host hold
the log once, and each reads only the pages its batches touch. The folder is written under a
temporary name and renamed into place, so a crash never leaves half a dataset that looks whole.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import uuid

import numpy as np

from genrank_jax.data.own_log.vocabulary import Vocabulary
from genrank_jax.data.schema import FeatureSpec, Interactions, ItemCatalog, RankingDataset

DONE = "dataset.json"


def save(dataset: RankingDataset, folder: pathlib.Path) -> None:
    """Write `dataset` into `folder` (atomically; an existing finished folder is kept)."""
    if (folder / DONE).is_file():
        return
    partial = folder.with_name(f"{folder.name}.partial-{uuid.uuid4().hex[:8]}")
    partial.mkdir(parents=True)
    try:
        log = dataset.interactions
        arrays = {"user_ids": log.user_ids, "item_ids": log.item_ids, "timestamps": log.timestamps,
                  "actions": log.actions, "request_starts": log.request_starts,
                  "train_requests": dataset.train_requests, "eval_requests": dataset.eval_requests,
                  "side_features": dataset.catalog.side_features}
        if log.user_rows is not None:
            arrays["user_rows"] = log.user_rows
        if dataset.catalog.content is not None:
            arrays["content"] = dataset.catalog.content
        arrays.update({f"extra.{name}": column for name, column in log.extras.items()})
        arrays.update({f"user_feature.{name}": column for name, column in dataset.user_features.items()})
        for name, array in arrays.items():
            np.save(partial / f"{name}.npy", np.ascontiguousarray(array))
        if dataset.vocabulary is not None:
            dataset.vocabulary.save(partial / "vocabulary.npz")
        spec = dataset.spec
        meta = {"name": dataset.name, "arrays": sorted(arrays),
                "spec": {"num_items": spec.num_items, "num_users": spec.num_users,
                         "action_names": list(spec.action_names),
                         "side_vocab_sizes": list(spec.side_vocab_sizes), "content_dim": spec.content_dim},
                "info": dict(dataset.info)}
        (partial / DONE).write_text(json.dumps(meta, default=str))
        try:
            os.rename(partial, folder)
        except OSError:  # another process finished first: its copy is as good as ours
            shutil.rmtree(partial, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def load(folder: pathlib.Path) -> RankingDataset | None:
    """The dataset saved in `folder`, its arrays memory-mapped read-only; None if not saved."""
    if not (folder / DONE).is_file():
        return None
    meta = json.loads((folder / DONE).read_text())
    arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in meta["arrays"]}
    spec = meta["spec"]
    info = meta["info"]
    info["side_feature_names"] = tuple(info.get("side_feature_names", ()))
    vocabulary = Vocabulary.load(folder / "vocabulary.npz") if (folder / "vocabulary.npz").is_file() else None
    return RankingDataset(
        name=meta["name"],
        spec=FeatureSpec(num_items=spec["num_items"], num_users=spec["num_users"],
                         action_names=tuple(spec["action_names"]), side_vocab_sizes=tuple(spec["side_vocab_sizes"]),
                         content_dim=spec["content_dim"]),
        catalog=ItemCatalog(side_features=arrays["side_features"], content=arrays.get("content")),
        interactions=Interactions(
            user_ids=arrays["user_ids"], item_ids=arrays["item_ids"], timestamps=arrays["timestamps"],
            actions=arrays["actions"], request_starts=arrays["request_starts"], user_rows=arrays.get("user_rows"),
            extras={n.split(".", 1)[1]: a for n, a in arrays.items() if n.startswith("extra.")}),
        train_requests=arrays["train_requests"], eval_requests=arrays["eval_requests"],
        user_features={n.split(".", 1)[1]: a for n, a in arrays.items() if n.startswith("user_feature.")},
        info=info, vocabulary=vocabulary)
