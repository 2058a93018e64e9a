"""The models: what a ranking model is made of and what it is trained against.

`config` (GenRankConfig, the presets and architectures), `genrank` (the GenRank model and its one
forward path), `blocks` (the Transformer and HSTU blocks), `embeddings` (token embeddings),
`baselines` (DIN, the features ranker, the logistic bias and `build_model`), `history_variants`
(the research history organizations), `losses` (the BCE losses) and `validation` (batch checks).
"""

from genrank_jax.model.baselines import DINRanker, FeaturesRanker, LogisticBias, build_model
from genrank_jax.model.config import ARCHITECTURES, PRESETS, Architecture, Block, GenRankConfig, Organization
from genrank_jax.model.genrank import BlockAttention, ForwardPass, GenRank, TaskHeads, attend_over
from genrank_jax.model.losses import candidate_and_history_bce, candidate_bce
from genrank_jax.model.validation import BatchError, validate_batch

__all__ = [
    "ARCHITECTURES", "PRESETS", "Architecture", "Block", "GenRankConfig", "Organization",
    "BlockAttention", "ForwardPass", "GenRank", "TaskHeads", "attend_over",
    "DINRanker", "FeaturesRanker", "LogisticBias", "build_model",
    "candidate_and_history_bce", "candidate_bce", "BatchError", "validate_batch",
]
