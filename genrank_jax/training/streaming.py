"""Training as feeds train: one pass over the log in time order, judged on what comes next.

The requests of the whole log (train and eval splits alike) are put in time order and cut into
windows (`parse_window`: a span of time such as "1d" or "6h", or a number of exposures). Each
window is first scored by the current model (progressive validation: every exposure is scored by
a model that has never seen it), then trained on once. The figure of a run is the mean of the
per-window AUC weighted by each window's scored exposures, over the windows after the warm-up:
those that start at or after the first eval request, so the stream is judged on the period the
epoch protocol evaluates on, by a model that has also learnt from everything before each window.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from genrank_jax.data.schema import RankingDataset

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclasses.dataclass(frozen=True)
class Window:
    """How the stream is cut: `seconds` of time per window, or `exposures` per window."""

    seconds: float | None = None
    exposures: int | None = None


def parse_window(text: str) -> Window:
    """"1d", "6h", "30m", "90s" (a span of time) or "100000" (exposures per window)."""
    text = str(text).strip()
    if re.fullmatch(r"\d+", text):
        if int(text) < 1:
            raise ValueError(f"a window of {text} exposures is empty: give a positive count or a span like 1d")
        return Window(exposures=int(text))
    found = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text)
    if not found or float(found.group(1)) <= 0:
        raise ValueError(f"window {text!r} is neither a span of time (e.g. 1d, 6h, 30m, 90s) nor a positive number "
                         "of exposures")
    return Window(seconds=float(found.group(1)) * UNITS[found.group(2)])


def stream_order(dataset: RankingDataset) -> np.ndarray:
    """[R] every request of the log, in time order (ties: by request index)."""
    times = dataset.interactions.request_times()
    return np.lexsort((np.arange(len(times)), times))


def window_ids(dataset: RankingDataset, requests: np.ndarray, window: Window) -> np.ndarray:
    """[len(requests)] window index of each request of `requests` (in time order), starting at 0."""
    log = dataset.interactions
    if window.exposures is not None:
        sizes = np.diff(log.request_starts)[requests]
        before = np.cumsum(sizes) - sizes  # exposures strictly before each request
        return (before // window.exposures).astype(np.int64)
    times = log.request_times()[requests]
    origin = times.min() if len(times) else 0.0
    ids = np.floor((times - origin) / window.seconds).astype(np.int64)
    return np.unique(ids, return_inverse=True)[1].astype(np.int64)  # empty spans of time are no window


def warmup_windows(dataset: RankingDataset, requests: np.ndarray, ids: np.ndarray) -> int:
    """Windows before the one holding the first eval request (all but the last when there is no eval split)."""
    eval_requests = np.asarray(dataset.eval_requests)
    if not len(eval_requests):
        return max(0, int(ids.max(initial=0)))
    first_eval = dataset.interactions.request_times()[eval_requests].min()
    times = dataset.interactions.request_times()[requests]
    later = np.flatnonzero(times >= first_eval)
    return int(ids[later[0]]) if len(later) else int(ids.max(initial=0)) + 1


def weighted_mean(windows: list[dict], task: str, key: str = "auc", skip: int = 0) -> float:
    """Mean of `key` of `task` over windows[skip:], weighted by each window's scored exposures
    (windows where the figure is undefined, e.g. a task with no positive, are left out)."""
    total = weight = 0.0
    for entry in windows[skip:]:
        value, count = entry["tasks"][task][key], entry["exposures"]
        if count and not math.isnan(value):
            total, weight = total + value * count, weight + count
    return total / weight if weight else float("nan")
