"""The validation slice: the last part of the training split by time, carved the same way for every source.

Early stopping and the small-data defaults are decided on it, never on the eval split. For a
temporal split (the default everywhere) the slice sits between the rest of train and eval in time:
the model is fitted on requests before the slice's cutoff, picked on the slice, and reported on
eval, so each step only sees the past of the next. For `last_request` the slice is still the
latest 15% of the train requests by time.

A fitted request's history is every earlier exposure of its user, so no validation label reaches
training: every fitted request is strictly earlier than every validation request.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from genrank_jax.data.schema import RankingDataset

VALIDATION_FRACTION = 0.15


def validation_slice(dataset: RankingDataset, fraction: float = VALIDATION_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """(fit_requests, validation_requests): train requests before / from the `1 - fraction` time quantile.

    The cutoff is a request time that occurs (quantile, method "higher"), so the slice is never
    empty; requests at exactly the cutoff time go to the slice, so every fitted request is strictly
    earlier than every validation request.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    requests = np.asarray(dataset.train_requests)
    if not len(requests):
        raise ValueError(f"{dataset.name}: the train split is empty, there is nothing to carve a validation slice from")
    times = dataset.interactions.request_times()[requests]
    cutoff = np.quantile(times, 1.0 - fraction, method="higher")
    fit, held = requests[times < cutoff], requests[times >= cutoff]
    if not len(fit):
        raise ValueError(f"{dataset.name}: every train request is at the validation cutoff time {cutoff}; "
                         "there is nothing left to fit on (use a smaller validation fraction or more data)")
    return fit, held


def validation_dataset(dataset: RankingDataset, fraction: float = VALIDATION_FRACTION) -> RankingDataset:
    """The dataset with train = the fitted part and eval = the validation slice (for choosing settings)."""
    fit, held = validation_slice(dataset, fraction)
    return dataclasses.replace(dataset, train_requests=fit, eval_requests=held)


__all__ = ["VALIDATION_FRACTION", "validation_dataset", "validation_slice"]
