"""Reading times and durations the way people write them: "0.8", "2024-03-01", "7d", "12h"."""

from __future__ import annotations

import datetime

import numpy as np

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_duration(text: str) -> float:
    """Seconds of "30d", "12h", "90m", "45s", "2w" or a plain number of seconds."""
    text = str(text).strip().lower()
    unit = _UNITS.get(text[-1:]) if text else None
    number = text[:-1] if unit else text
    try:
        value = float(number) * (unit or 1.0)
    except ValueError:
        raise ValueError(f"cannot read duration {text!r}; use e.g. 7d, 12h, 90m, 45s or seconds") from None
    if not value > 0:
        raise ValueError(f"duration must be positive, got {text!r}")
    return value


def parse_time(text: str, timestamps: np.ndarray) -> float:
    """Seconds of a cutoff given as a quantile of `timestamps` (0 < q < 1), an ISO date/time
    (UTC unless it names a zone) or seconds since the epoch."""
    text = str(text).strip()
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"cannot read time {text!r}; use a quantile like 0.8, an ISO date "
                             "like 1998-03-01, or seconds") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
        return moment.timestamp()
    if 0.0 < value < 1.0:
        return float(np.quantile(np.asarray(timestamps, np.float64), value))
    return value
