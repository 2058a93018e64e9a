"""Model configuration: one frozen dataclass, named presets, overrides by keyword."""

from __future__ import annotations

import dataclasses
import json
from typing import Literal

from genrank_jax.data.schema import FeatureSpec

Block = Literal["transformer", "hstu"]
Organization = Literal["action", "item"]
Architecture = Literal["genrank", "din", "logistic", "features"]
ARCHITECTURES = ("genrank", "din", "logistic", "features")

# Named shapes. "paper": the HSTU baseline shape of the GenRank paper (3 blocks, 8 heads, width 768,
# at most 480 tokens).
PRESETS: dict[str, dict] = {
    "tiny": dict(width=32, num_blocks=1, num_heads=2, max_tokens=128),
    "small": dict(width=64, num_blocks=2, num_heads=4, max_tokens=512),
    "paper": dict(width=768, num_blocks=3, num_heads=8, max_tokens=480),
}


@dataclasses.dataclass(frozen=True)
class GenRankConfig:
    """Everything that shapes a GenRank model or one of its baselines.

    architecture: "genrank" (a token sequence model; `organization` picks action- or
      item-oriented tokens, `block` the block type), "din" (DIN-style target attention + MLP) or
      "logistic" (per-task user bias + item bias, nothing else) or "features" (the production
      baseline: a logistic regression, or an MLP with `features_hidden` units, on aggregate features
      of earlier requests: `genrank_jax.data.aggregates`).
    use_aggregates: GenRank adds a projection of the same aggregate features to each item token.
    max_tokens: longest token sequence (history + candidates) the position table covers.
    use_alibi / use_time_bias: the parameter-free ALiBi position and time biases in attention.
    time_bias_scale: multiplies the geometric per-head slopes of the time term.
    task_weights: one loss weight per action type (None: all 1).
    attention_impl: backend of `genrank_jax.kernels.attention` (None: fastest for the device).
    attention_interpret: run that Pallas backend in interpret mode (how CPU CI tests the kernels).
    history_mask: "causal" (the paper's model) or "full" (history tokens see the whole history: the
      paper's ablation; `genrank_jax.model.history_variants`).
    history_loss: also score every history exposure from the history before it and add its loss
      (the paper's other ablation; training only, scoring is unchanged).
    embedding_row_multiple: the item, user and side-feature tables get their rows rounded up to a
      multiple of this (the padded rows are never read), so they split evenly over a mesh axis
      (`genrank_jax.sharding`); 1: no padding.
    """

    features: FeatureSpec
    architecture: Architecture = "genrank"
    organization: Organization = "action"
    block: Block = "transformer"
    width: int = 64
    num_blocks: int = 2
    num_heads: int = 4
    mlp_ratio: int = 4
    max_tokens: int = 512
    num_request_slots: int = 64
    num_gap_buckets: int = 16
    num_slots: int = 64  # exposure index inside a request (display position)
    num_user_buckets: int | None = None  # None: one row per user id (features.num_users)
    use_alibi: bool = True
    use_time_bias: bool = True
    alibi_max_bias: float = 8.0
    time_bias_scale: float = 0.25
    use_user_embedding: bool = True
    use_aggregates: bool = False
    aggregates_wide: bool = True  # with use_aggregates: a linear path from them to the logits too
    zero_deep_head: bool = False  # with the wide path: the sequence part's logits start at 0
    features_hidden: int = 0  # the features ranker's hidden units (0: logistic regression)
    task_weights: tuple[float, ...] | None = None
    attention_impl: str | None = None
    attention_interpret: bool = False  # run a Pallas backend in interpret mode (CPU tests)
    dtype: str = "float32"  # activations/compute dtype; parameters stay float32
    embedding_row_multiple: int = 1
    history_mask: Literal["causal", "full"] = "causal"
    history_loss: bool = False

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}")
        if self.features_hidden < 0:
            raise ValueError(f"features_hidden must be >= 0, got {self.features_hidden}")
        if self.organization not in ("action", "item"):
            raise ValueError(f"organization must be 'action' or 'item', got {self.organization!r}")
        if self.block not in ("transformer", "hstu"):
            raise ValueError(f"block must be 'transformer' or 'hstu', got {self.block!r}")
        if self.width % self.num_heads:
            raise ValueError(f"width={self.width} must be a multiple of num_heads={self.num_heads}")
        if self.history_mask not in ("causal", "full"):
            raise ValueError(f"history_mask must be 'causal' or 'full', got {self.history_mask!r}")
        if self.history_loss and (self.architecture != "genrank" or self.organization != "action"
                                  or self.history_mask != "causal"):
            # item-oriented history has no exposure token to score; a fully visible history would
            # show each history exposure's own actions to the token that predicts them
            raise ValueError("history_loss needs architecture='genrank', organization='action' and "
                             f"history_mask='causal', got {self.architecture!r}, {self.organization!r}, "
                             f"{self.history_mask!r}")
        if self.embedding_row_multiple < 1:
            raise ValueError(f"embedding_row_multiple must be positive, got {self.embedding_row_multiple}")
        if self.task_weights is not None and len(self.task_weights) != self.features.num_actions:
            raise ValueError(f"task_weights has {len(self.task_weights)} entries, expected one per action "
                             f"{self.features.action_names}")

    @classmethod
    def preset(cls, name: str, features: FeatureSpec, **overrides) -> "GenRankConfig":
        """The named shape ("tiny", "small", "paper") for these features, with overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(features=features, **{**PRESETS[name], **overrides})

    @property
    def reads_aggregates(self) -> bool:
        """Whether the model's batches carry aggregate features (`SampleLayout.aggregates`)."""
        return self.architecture == "features" or self.use_aggregates

    @property
    def user_rows(self) -> int:
        """Rows of the user table: user ids are hashed modulo this many buckets."""
        return self.num_user_buckets or self.features.num_users

    def table_rows(self, rows: int) -> int:
        """Rows allocated for a table of `rows` ids: padded up to `embedding_row_multiple`."""
        return -(-rows // self.embedding_row_multiple) * self.embedding_row_multiple

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "GenRankConfig":
        fields = json.loads(text)
        features = fields.pop("features")
        for key in ("action_names", "side_vocab_sizes"):
            features[key] = tuple(features[key])
        if fields.get("task_weights") is not None:
            fields["task_weights"] = tuple(fields["task_weights"])
        return cls(features=FeatureSpec(**features), **fields)
