"""genrank-jax: GenRank generative ranking and the Leakage Impact Score, in JAX.

Public API:
  GenRankConfig, GenRank, DINRanker, build_model       the models (Flax NNX)
  TokenBatch, SampleBuilder, SampleLayout              token batches from a RankingDataset
  RankingDataset, FeatureSpec, load_dataset            data (simulator, MovieLens, KuaiRand)
  candidate_bce, make_optimizer, Trainer, TrainConfig  training
  validate_batch, metrics                              checks and AUC / GAUC
  GenRankError, BatchError, NonFiniteLossError         errors a user can fix (one CLI line)
  simulate, SimulatorConfig                            the feed simulator (the embedded default data)
  split_batch, requests_from                           a token batch as serving inputs / Scorer requests
  attention, cached_attention, backend_report         the fused jagged attention op, its serving form
                                                       against a history cache, and which backend runs
  History, Candidates, HistoryCache, Scorer, Request   serving: encode a history once, score candidates
  encode_history                                       a history's per-block keys and values
  export_scorer, load_export, LoadedExport,            a trained model as a jax.export artifact, and
  load_checkpoint_model                                a checkpoint's model
  genrank_jax.leakage                                  LIS / AIS with probe rankers
"""

import importlib as _importlib
import warnings as _warnings

from genrank_jax import metrics
from genrank_jax.data.batching import BatchPlan, iterate_batches
from genrank_jax.data.samples import SampleBuilder, SampleLayout
from genrank_jax.data.schema import FeatureSpec, Interactions, ItemCatalog, RankingDataset
from genrank_jax.data.sources import load_dataset
from genrank_jax.data.synthetic import SimulatorConfig, simulate
from genrank_jax.data.tokens import TokenBatch, TokenKind
from genrank_jax.errors import GenRankError
from genrank_jax.kernels import attention, backend_report, cached_attention
from genrank_jax.model import (
    PRESETS,
    BatchError,
    DINRanker,
    GenRank,
    GenRankConfig,
    build_model,
    candidate_bce,
    validate_batch,
)
from genrank_jax.serving import (
    Candidates,
    History,
    HistoryCache,
    LoadedExport,
    Request,
    Scorer,
    ServingError,
    encode_history,
    export_scorer,
    load_checkpoint_model,
    load_export,
    requests_from,
    split_batch,
)
from genrank_jax.training import NonFiniteLossError, TrainConfig, Trainer, make_optimizer

__version__ = "0.1.0"

__all__ = [
    # models and training
    "GenRankConfig", "PRESETS", "GenRank", "DINRanker", "build_model", "candidate_bce", "make_optimizer",
    "TrainConfig", "Trainer", "metrics",
    # data
    "load_dataset", "RankingDataset", "FeatureSpec", "ItemCatalog", "Interactions", "SimulatorConfig", "simulate",
    "TokenBatch", "TokenKind", "SampleBuilder", "SampleLayout", "BatchPlan", "iterate_batches", "validate_batch",
    # kernels
    "attention", "cached_attention", "backend_report",
    # serving and export
    "History", "Candidates", "HistoryCache", "encode_history", "split_batch", "Scorer", "Request", "requests_from",
    "export_scorer", "load_export", "LoadedExport", "load_checkpoint_model",
    # errors a user can fix (one CLI line, exit 2); anything else is a defect
    "GenRankError", "BatchError", "NonFiniteLossError", "ServingError",
    "__version__",
]


# the public subpackages, listed by dir() beside __all__; implementation modules are not listed
PUBLIC_SUBPACKAGES = ("data", "kernels", "leakage", "sharding", "model", "training", "serving")


def __dir__() -> list[str]:
    return sorted([*__all__, *PUBLIC_SUBPACKAGES])


def __getattr__(name: str):
    # old names, resolved on access: GenrankError (now GenRankError) and the modules the layout moved
    # (`genrank_jax.config` after `import genrank_jax` worked while the modules were flat); both warn
    from genrank_jax._moved import MOVED

    if name == "GenrankError":
        _warnings.warn("GenrankError is now GenRankError (genrank_jax.GenRankError)", DeprecationWarning, stacklevel=2)
        return GenRankError
    if name in MOVED:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
