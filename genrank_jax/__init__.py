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
  attention                                            the fused jagged attention op
  History, Candidates, HistoryCache, Scorer, Request   serving: encode a history once, score candidates
  genrank_jax.kernels.attention                        the fused jagged attention op
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
from genrank_jax.kernels import attention
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
    Request,
    Scorer,
    ServingError,
    requests_from,
    split_batch,
)
from genrank_jax.training import NonFiniteLossError, TrainConfig, Trainer, make_optimizer

__version__ = "0.1.0"

__all__ = [
    "metrics", "DINRanker", "build_model", "PRESETS", "GenRankConfig", "BatchPlan", "iterate_batches",
    "SampleBuilder", "SampleLayout", "FeatureSpec", "ItemCatalog", "Interactions", "RankingDataset",
    "load_dataset", "TokenBatch", "TokenKind", "candidate_bce", "GenRank", "TrainConfig", "Trainer",
    "make_optimizer", "Request", "Scorer", "Candidates", "History", "HistoryCache", "ServingError", "BatchError",
    "validate_batch",
]
__all__ += ["GenRankError", "NonFiniteLossError", "SimulatorConfig", "simulate", "attention", "requests_from",
            "split_batch", "__version__"]


def __dir__() -> list[str]:
    # the public names only: submodules (config, model, data, ...) stay importable, not listed
    return sorted(__all__)


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
