"""Shape legend and array aliases used at every public boundary.

Dimension letters:
  B  batch (samples, one per user request)
  S  padded token sequence length (history tokens then candidate tokens)
  N  history exposures of one sample          M  candidates of one sample
  H  attention heads    D  query/key head dim   Dv value head dim
  A  action types (tasks)   F  categorical side features   C  content-embedding width
  E  exposures (rows) of an interaction log   I  items   U  users   W  model width
"""

from __future__ import annotations

from jaxtyping import Array, Bool, Float, Int

__all__ = [
    "Array", "Bool", "Float", "Int",
    "Queries", "Keys", "Values", "Lengths", "TokenPositions", "TokenTimes", "HeadSlopes",
    "AttentionOut", "Hidden", "TaskLogits",
    "CandidateQueries", "CandidateValues", "CandidateOut", "CandidatePositions", "CandidateTimes",
    "CachedKeys", "CachedValues", "CachePositions", "CacheTimes",
]

Queries = Float[Array, "B S H D"]
Keys = Float[Array, "B S H D"]
Values = Float[Array, "B S H Dv"]
AttentionOut = Float[Array, "B S H Dv"]
Lengths = Int[Array, "B"]
TokenPositions = Int[Array, "B S"]
TokenTimes = Float[Array, "B S"]
HeadSlopes = Float[Array, "H"]
Hidden = Float[Array, "B S W"]
TaskLogits = Float[Array, "B S A"]

# the cached op (serving): M candidates of a sample against N cached history tokens
CandidateQueries = Float[Array, "B M H D"]
CandidateValues = Float[Array, "B M H Dv"]
CandidateOut = Float[Array, "B M H Dv"]
CandidatePositions = Int[Array, "B M"]
CandidateTimes = Float[Array, "B M"]
CachedKeys = Float[Array, "B N H D"]
CachedValues = Float[Array, "B N H Dv"]
CachePositions = Int[Array, "B N"]
CacheTimes = Float[Array, "B N"]
