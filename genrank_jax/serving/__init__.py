"""Serving: score candidates against a history encoded once, in process or from an exported model.

`history_cache` (History, Candidates, HistoryCache; encode_history / score / append and their
input checks), `scorer` (Scorer: many requests in fixed-shape micro-batches) and `export`
(a trained model's encode/score functions as `jax.export` artifacts, and loading them back).
"""

from genrank_jax.serving.export import (
    LoadedExport,
    export_scorer,
    load_checkpoint_model,
    load_checkpoint_vocabulary,
    load_export,
    load_vocabulary,
)
from genrank_jax.serving.history_cache import (
    Candidates,
    History,
    HistoryCache,
    ServingError,
    append,
    check_candidates,
    check_features,
    check_history,
    check_model,
    check_users,
    encode_history,
    model_tag,
    score,
    split_batch,
)
from genrank_jax.serving.scorer import Request, Scorer, requests_from

__all__ = [
    "History", "Candidates", "HistoryCache", "ServingError", "split_batch", "encode_history", "score", "append",
    "model_tag", "check_model", "check_history", "check_candidates", "check_users", "check_features",
    "Request", "Scorer", "requests_from",
    "export_scorer", "load_export", "LoadedExport", "load_checkpoint_model", "load_checkpoint_vocabulary",
    "load_vocabulary",
]
