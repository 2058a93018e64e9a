"""Reading times and durations the way people write them: "0.8", "2024-03-01", "7d", "12h".

A time (`parse_time`, `parse_cutoff`) is one of:
- a quantile of the log's times: a number strictly between 0 and 1 ("0.8");
- an ISO date or date-time, UTC unless it names a zone ("1998-03-01", "1998-03-01T12:00+02:00");
- Unix seconds: any other number ("888000000"); "2.0" is two seconds after 1970, not a quantile,
  and `parse_cutoff` rejects it as outside the log, naming the log's first and last dates.
"""

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


def format_time(seconds: float) -> str:
    """A Unix time as an ISO UTC date-time (or the number, when no calendar can hold it)."""
    try:
        moment = datetime.datetime.fromtimestamp(float(seconds), tz=datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return f"{seconds:g} s"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def parse_cutoff(text: str, timestamps: np.ndarray, *, option: str = "--cutoff") -> float:
    """`parse_time`, required to split the log: after its first time and at or before its last.

    Outside that range there is nothing to train on (or nothing to evaluate), so the error names
    what the text was read as and both ends of the log.
    """
    timestamps = np.asarray(timestamps, np.float64)
    if timestamps.size == 0:
        raise ValueError(f"{option} {text}: the log is empty")
    value = parse_time(text, timestamps)
    first, last = float(timestamps.min()), float(timestamps.max())
    if not first < value <= last:
        where = "the log's first time: nothing before it to train on" if value == first else "outside the log"
        raise ValueError(
            f"{option} {text} is read as {format_time(value)}, {where}; the log runs from {format_time(first)} "
            f"to {format_time(last)}; give a quantile in (0, 1), a date in that range, or Unix seconds in "
            f"({first:.0f}, {last:.0f}]")
    return value
