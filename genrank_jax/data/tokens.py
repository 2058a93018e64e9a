"""Token batches: the padded arrays a model consumes, for either token organization.

Action-oriented (GenRank): one token per history exposure (item + actions taken), then one token
per candidate (item + the learned mask-action vector); N + M tokens.
Item-oriented (HSTU baseline): history interleaved as item token, action token, ...; then the
candidates' item tokens; 2N + M tokens. Both come from the same samples (`samples.py`).
"""

from __future__ import annotations

import dataclasses
import enum

import jax
import numpy as np

NO_ITEM = -1  # item id of tokens that carry no item (action tokens, padding)


class TokenKind(enum.IntEnum):
    PAD = 0
    EXPOSURE = 1   # action-oriented history token: item + actions
    ITEM = 2       # item-oriented history item token
    ACTION = 3     # item-oriented history action token
    CANDIDATE = 4  # candidate item, the actions to predict


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TokenBatch:
    """A padded batch of token sequences (numpy or jax arrays).

    user_ids: [B] int32              lengths, num_candidates: [B] int32 (tokens, candidates per row)
    item_ids: [B, S] int32 (NO_ITEM where none)   kinds: [B, S] int8 TokenKind
    actions: [B, S, A] float32 actions taken (0 on candidates and item tokens)
    side: [B, S, F] int32 item side features      content: [B, S, C] float32 (C may be 0)
    positions: [B, S] int32 (candidates of a request share one)
    request_index: [B, S] int32 (distinct requests before this token's request, in the sample)
    gap_bucket: [B, S] int32 (bucketed time since the previous request; 0 = no previous request)
    slot: [B, S] int32 the exposure's index inside its request (its display position in a feed)
    timestamps: [B, S] float32 seconds relative to the sample's request (<= 0)
    labels: [B, S, A] float32 (candidate tokens only; 0 elsewhere)
    candidate_index: [B, M] int32 token index of each candidate (S where the slot is empty), for
      models that score candidates only (the DIN ranker) and for gathering per-candidate outputs
    aggregates: [B, S, K] float32 per-exposure aggregate features (`genrank_jax.data.aggregates`)
      on tokens that carry an item, 0 elsewhere; None when the layout does not build them
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    kinds: np.ndarray
    actions: np.ndarray
    side: np.ndarray
    content: np.ndarray
    positions: np.ndarray
    request_index: np.ndarray
    gap_bucket: np.ndarray
    slot: np.ndarray
    timestamps: np.ndarray
    labels: np.ndarray
    lengths: np.ndarray
    num_candidates: np.ndarray
    candidate_index: np.ndarray
    aggregates: np.ndarray | None = None

    @property
    def batch_size(self) -> int:
        return int(self.item_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.item_ids.shape[1])

    def candidate_mask(self):
        """[B, S] bool: tokens whose actions are predicted (and where the loss is taken)."""
        return self.kinds == TokenKind.CANDIDATE

    def num_exposures(self) -> int:
        """Candidates in the batch: the exposures a training step learns from."""
        return int(np.asarray(self.num_candidates).sum())

    def padding_ratio(self) -> float:
        """Fraction of the padded token grid that is padding."""
        return 1.0 - float(np.asarray(self.lengths).sum()) / max(1, self.item_ids.size)
