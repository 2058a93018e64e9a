"""Per-row lookups along each user's timeline, vectorized (no Python loop over users or rows).

Both lookups merge the engagement events and the query rows into one order by (user, time) and
count engagements with a cumulative sum; ties in time are broken so that "before" is strict (an
exposure never sees its own request's outcome) and "after" is strict too.
"""

from __future__ import annotations

import numpy as np


def _sorted_events(user, timestamp, rows):
    order = np.lexsort((timestamp[rows], user[rows]))
    return rows[order]


def _events_before(event_user, event_time, query_user, query_time, *, inclusive: bool) -> np.ndarray:
    """[Q] number of events (sorted by user, time) with a smaller (user, time) than each query.

    inclusive=False counts events strictly earlier in time within the same user; inclusive=True
    also counts events at exactly the query's time.
    """
    num_events = event_user.shape[0]
    users = np.concatenate([event_user, query_user])
    times = np.concatenate([event_time, query_time])
    # at equal (user, time) the query sorts first when ties are excluded, last when included
    is_event = np.concatenate([np.ones(num_events, bool), np.zeros(query_user.shape[0], bool)])
    tie_rank = np.where(is_event, 0, 1) if inclusive else np.where(is_event, 1, 0)
    order = np.lexsort((tie_rank, times, users))
    event_sorted = is_event[order]
    before = np.cumsum(event_sorted) - event_sorted
    counts = np.empty(query_user.shape[0], np.int64)
    counts[order[~event_sorted] - num_events] = before[~event_sorted]
    return counts


def recent_engaged(user, item, timestamp, engaged, length: int, pad: int) -> np.ndarray:
    """[N, length] the items of each row's user's last `length` engagements strictly before it.

    Most recent first; missing slots hold `pad`. engaged: [N] bool.
    """
    rows = user.shape[0]
    events = _sorted_events(user, timestamp, np.flatnonzero(engaged))
    event_user = user[events]
    counts = _events_before(event_user, timestamp[events], user, timestamp, inclusive=False)
    own = counts - np.searchsorted(event_user, user, side="left")  # this user's earlier engagements
    slot = np.arange(length)
    index = counts[:, None] - 1 - slot
    valid = slot < own[:, None]
    history = np.full((rows, length), pad, np.int64)
    if events.size:
        history = np.where(valid, item[events][np.clip(index, 0, None)], pad)
    return history.astype(np.int32)


def next_engaged(user, timestamp, event_rows) -> np.ndarray:
    """[N] row of the first event (of `event_rows`) of each row's user strictly after it; -1 if none."""
    events = _sorted_events(user, timestamp, np.asarray(event_rows, np.int64))
    event_user = user[events]
    counts = _events_before(event_user, timestamp[events], user, timestamp, inclusive=True)
    user_end = np.searchsorted(event_user, user, side="right")
    found = counts < user_end
    result = np.full(user.shape[0], -1, np.int64)
    result[found] = events[counts[found]]
    return result
