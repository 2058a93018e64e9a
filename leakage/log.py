"""The flat interaction log every leakage computation reads.

One row per exposure: who saw which item when, and the 0/1 outcome of each task. Rows need not be
sorted; every consumer sorts what it needs itself. Probes train on rows before a cutoff time and are
evaluated after it; leak builders read the rows after it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from genrank_jax.data.schema import RankingDataset


@dataclasses.dataclass(frozen=True, eq=False)
class InteractionLog:
    """Exposures as parallel numpy arrays.

    user, item: [N] non-negative int ids; timestamp: [N] finite seconds (float64);
    labels: [N] or [N, T] in {0, 1} (T tasks; stored as [N, T] uint8, see `label_matrix`);
    request: [N] optional request id (exposures shown together share one).
    num_items / num_users: vocabulary sizes (default: largest id + 1); per-item features must have
    `num_items` rows. task_names: one name per label column (default "task0", ...).
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    labels: np.ndarray
    request: np.ndarray | None = None
    num_items: int | None = None
    num_users: int | None = None
    task_names: tuple[str, ...] | None = None

    def __post_init__(self):
        user, item = _ids("user", self.user), _ids("item", self.item)
        rows = user.shape[0]
        timestamp = np.asarray(self.timestamp, np.float64)
        labels = np.asarray(self.labels)
        if item.shape != (rows,) or timestamp.shape != (rows,):
            raise ValueError(f"user, item and timestamp must have the same length [N]; got user {user.shape}, "
                             f"item {item.shape}, timestamp {timestamp.shape}")
        if not np.isfinite(timestamp).all():
            raise ValueError(f"timestamp holds {np.count_nonzero(~np.isfinite(timestamp))} non-finite values")
        if labels.ndim == 1:
            labels = labels[:, None]
        if labels.ndim != 2 or labels.shape[0] != rows:
            raise ValueError(f"labels must be [N] or [N, T] with N = {rows}, got shape {np.shape(self.labels)}")
        if labels.size and not np.isin(labels, (0, 1)).all():
            raise ValueError("labels must be 0 or 1")
        request = None
        if self.request is not None:
            request = _ids("request", self.request)
            if request.shape != (rows,):
                raise ValueError(f"request must have length {rows}, got shape {request.shape}")
        num_items = _vocabulary("num_items", self.num_items, item)
        num_users = _vocabulary("num_users", self.num_users, user)
        names = self.task_names or tuple(f"task{t}" for t in range(labels.shape[1]))
        if len(names) != labels.shape[1]:
            raise ValueError(f"task_names has {len(names)} names for {labels.shape[1]} label columns")
        for field, value in dict(user=user, item=item, timestamp=timestamp, labels=labels.astype(np.uint8),
                                 request=request, num_items=num_items, num_users=num_users,
                                 task_names=tuple(names)).items():
            object.__setattr__(self, field, value)

    @classmethod
    def from_dataset(cls, dataset: RankingDataset, task: str | int | list | tuple | None = None) -> "InteractionLog":
        """The log of a `RankingDataset`; `task` picks action columns by name or index (None: all)."""
        log = dataset.interactions
        names = dataset.spec.action_names
        if task is None:
            columns = list(range(len(names)))
        else:
            picked = [task] if isinstance(task, (str, int, np.integer)) else list(task)
            columns = []
            for t in picked:
                if isinstance(t, str):
                    if t not in names:
                        raise ValueError(f"unknown task {t!r}; the dataset has {names}")
                    columns.append(names.index(t))
                elif 0 <= int(t) < len(names):
                    columns.append(int(t))
                else:
                    raise ValueError(f"task index {t} outside [0, {len(names)})")
        request = np.repeat(np.arange(log.num_requests), np.diff(log.request_starts))
        return cls(user=log.user_ids, item=log.item_ids, timestamp=log.timestamps,
                   labels=log.actions[:, columns], request=request, num_items=dataset.spec.num_items,
                   # a user's own log: one probe row per timeline (its OOV users are distinct people)
                   num_users=dataset.spec.num_users if log.user_rows is None else len(log.user_rows),
                   task_names=tuple(names[c] for c in columns))

    @property
    def num_rows(self) -> int:
        return int(self.user.shape[0])

    @property
    def num_tasks(self) -> int:
        return int(self.labels.shape[1])

    def label_matrix(self) -> np.ndarray:
        """[N, T] uint8 labels."""
        return self.labels

    def engaged(self) -> np.ndarray:
        """[N] bool: the exposure got a positive label on any task (what "engaged" means here)."""
        return self.labels.any(axis=1)

    def rows_between(self, start: float | None, end: float | None, *, closed: str = "left") -> np.ndarray:
        """Sorted row indices with start <= t < end ("left") or start < t <= end ("right"); None: open."""
        t = self.timestamp
        keep = np.ones(self.num_rows, bool)
        if closed == "left":
            if start is not None:
                keep &= t >= start
            if end is not None:
                keep &= t < end
        elif closed == "right":
            if start is not None:
                keep &= t > start
            if end is not None:
                keep &= t <= end
        else:
            raise ValueError(f"closed must be 'left' or 'right', got {closed!r}")
        return np.flatnonzero(keep)


def _ids(name: str, values) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {values.shape}")
    if values.size and not np.issubdtype(values.dtype, np.integer):
        if not np.all(np.mod(values, 1) == 0):
            raise ValueError(f"{name} ids must be integers")
    values = values.astype(np.int64)
    if values.size and values.min() < 0:
        raise ValueError(f"{name} ids must be non-negative, found {values.min()}")
    return values


def _vocabulary(name: str, size: int | None, ids: np.ndarray) -> int:
    largest = int(ids.max()) + 1 if ids.size else 0
    if size is None:
        return max(largest, 1)
    if size < largest:
        raise ValueError(f"{name}={size} but ids go up to {largest - 1}")
    return int(size)
