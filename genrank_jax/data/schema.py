"""The data contract: an interaction log grouped into requests, an item catalog, and splits.

Every source (the simulator, MovieLens, KuaiRand, a user's own data) produces a `RankingDataset`.
A training or evaluation *sample* is one request of one user: its exposures are the candidates and
all of that user's earlier exposures are the history (see `samples.py`).

Arrays are numpy; exposures are rows sorted by (user, timestamp), so a user's timeline and a
request's exposures are contiguous row ranges.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """Vocabularies of a dataset: what a model needs to size its embedding tables.

    Item ids are in [0, num_items), user ids in [0, num_users). `side_vocab_sizes[f]` is the number
    of values of categorical item feature f (values in [0, size)). `content_dim` is the width of the
    frozen content embedding (0: none).
    """

    num_items: int
    num_users: int
    action_names: tuple[str, ...]
    side_vocab_sizes: tuple[int, ...] = ()
    content_dim: int = 0

    def __post_init__(self):
        if self.num_items <= 0 or self.num_users <= 0:
            raise ValueError(f"num_items and num_users must be positive, got {self.num_items=}, {self.num_users=}")
        if not self.action_names:
            raise ValueError("action_names must name at least one action type")
        if any(size <= 0 for size in self.side_vocab_sizes):
            raise ValueError(f"side_vocab_sizes must be positive, got {self.side_vocab_sizes}")

    @property
    def num_actions(self) -> int:
        return len(self.action_names)


@dataclasses.dataclass(frozen=True)
class ItemCatalog:
    """Per-item features. side_features: [I, F] int32; content: [I, C] float32 or None."""

    side_features: np.ndarray
    content: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Interactions:
    """Exposures sorted by (user, timestamp), grouped into requests.

    user_ids, item_ids: [E] int32; timestamps: [E] float64 Unix-like seconds; actions: [E, A] uint8
    (1 = that action was taken on the exposure); request_starts: [R + 1] int64 row offsets: request r
    is rows request_starts[r]:request_starts[r + 1], all of one user at one timestamp-ordered slot.
    user_rows: optional [U] int32, the model's user id (embedding row) of each user of `user_ids`:
    a user's own log keeps every user's timeline apart while users outside the vocabulary share
    OOV rows (genrank_jax/data/own_log). None: `user_ids` are the model's user ids.
    extras: optional per-exposure columns, each [E] (e.g. KuaiRand's `is_rand` for unbiased
    evaluation, MovieLens' `rating`); models ignore them.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray
    actions: np.ndarray
    request_starts: np.ndarray
    extras: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    user_rows: np.ndarray | None = None

    @property
    def num_exposures(self) -> int:
        return int(self.item_ids.shape[0])

    @property
    def num_requests(self) -> int:
        return int(self.request_starts.shape[0] - 1)

    def request_users(self) -> np.ndarray:
        """[R] user of each request."""
        return self.user_ids[self.request_starts[:-1]]

    def model_users(self, users: np.ndarray) -> np.ndarray:
        """The model's user ids (embedding rows) of timeline users `users`."""
        return users if self.user_rows is None else self.user_rows[users]

    def request_times(self) -> np.ndarray:
        """[R] timestamp of each request (its first exposure)."""
        return self.timestamps[self.request_starts[:-1]]


@dataclasses.dataclass(frozen=True)
class RankingDataset:
    """A dataset ready for training: vocabularies, items, log, and the requests of each split.

    train_requests / eval_requests: [R_split] int64 request indices into `interactions`. The history
    of a sample is every earlier exposure of its user, whatever the split (a temporal split evaluates
    requests after the cutoff with all of the user's past as history).
    oracle_probabilities: [E, A] float32, the true action probabilities when known (simulator only).
    user_features: optional categorical user features, each [U] int32 (real datasets that have them);
    the model contract needs only item side features.
    info: provenance (source, split cutoff, skipped bad rows, ...); free-form, JSON-like.
    vocabulary: raw id -> dense id of a user's own log (genrank_jax.data.own_log.Vocabulary); saved
    with checkpoints and exports so serving maps raw ids as training did. None for other sources.
    """

    name: str
    spec: FeatureSpec
    catalog: ItemCatalog
    interactions: Interactions
    train_requests: np.ndarray
    eval_requests: np.ndarray
    oracle_probabilities: np.ndarray | None = None
    user_features: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    vocabulary: Any = None

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistency between the parts."""
        spec, log, catalog = self.spec, self.interactions, self.catalog
        rows = log.num_exposures
        for name in ("user_ids", "item_ids", "timestamps"):
            if getattr(log, name).shape != (rows,):
                raise ValueError(f"interactions.{name} must have shape ({rows},), got {getattr(log, name).shape}")
        if log.actions.shape != (rows, spec.num_actions):
            raise ValueError(f"interactions.actions must have shape ({rows}, {spec.num_actions}), "
                             f"got {log.actions.shape}")
        if rows and (log.item_ids.min() < 0 or log.item_ids.max() >= spec.num_items):
            raise ValueError(f"item id outside the vocabulary [0, {spec.num_items}): "
                             f"min {log.item_ids.min()}, max {log.item_ids.max()}")
        users = spec.num_users if log.user_rows is None else len(log.user_rows)
        if rows and (log.user_ids.min() < 0 or log.user_ids.max() >= users):
            raise ValueError(f"user id outside the vocabulary [0, {users}): "
                             f"min {log.user_ids.min()}, max {log.user_ids.max()}")
        if log.user_rows is not None and len(log.user_rows) and (
                log.user_rows.min() < 0 or log.user_rows.max() >= spec.num_users):
            raise ValueError(f"interactions.user_rows outside the user vocabulary [0, {spec.num_users})")
        for name, column in log.extras.items():
            if column.shape[:1] != (rows,):
                raise ValueError(f"interactions.extras[{name!r}] must have {rows} rows, got shape {column.shape}")
        for name, column in self.user_features.items():
            if column.shape != (spec.num_users,):
                raise ValueError(f"user_features[{name!r}] must have shape ({spec.num_users},), got {column.shape}")
        if not np.isfinite(log.timestamps).all():
            raise ValueError("interactions.timestamps must be finite")
        starts = log.request_starts
        if starts[0] != 0 or starts[-1] != rows or np.any(np.diff(starts) <= 0):
            raise ValueError("request_starts must start at 0, end at the number of exposures and strictly increase")
        expected_side = (spec.num_items, len(spec.side_vocab_sizes))
        if catalog.side_features.shape != expected_side:
            raise ValueError(f"catalog.side_features must have shape {expected_side}, "
                             f"got {catalog.side_features.shape}")
        for f, size in enumerate(spec.side_vocab_sizes):
            column = catalog.side_features[:, f]
            if column.size and (column.min() < 0 or column.max() >= size):
                raise ValueError(f"side feature {f} has values outside [0, {size})")
        if spec.content_dim:
            if catalog.content is None or catalog.content.shape != (spec.num_items, spec.content_dim):
                got = None if catalog.content is None else catalog.content.shape
                raise ValueError(f"catalog.content must have shape ({spec.num_items}, {spec.content_dim}), got {got}")
        for split in ("train_requests", "eval_requests"):
            requests = getattr(self, split)
            if requests.size and (requests.min() < 0 or requests.max() >= log.num_requests):
                raise ValueError(f"{split} holds request indices outside [0, {log.num_requests})")
