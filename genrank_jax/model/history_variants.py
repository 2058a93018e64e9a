"""The GenRank paper's two "why it works" ablations, as model options for research runs.

- `history_mask="full"`: history tokens see the whole history, later exposures included, instead of
  the causal prefix (the paper: a fully visible history lost at least 0.0015 AUC). Candidates still
  see the history and themselves. With one block it changes nothing a candidate reads: candidates
  attend to the history tokens' *inputs*, which no mask touches; from two blocks on it does.
- `history_loss=True`: every history exposure is also scored the way a candidate is, from the
  history before it, and its cross-entropy joins the candidates' in the loss (the paper: at least
  -0.0100 AUC, from one-epoch overfitting of sparse ids: an exposure is then trained on again in
  every later request of its user). Implemented with "shadow" tokens appended after the sequence:
  shadow i is history exposure i with the mask action in place of its actions; it sees the
  history strictly before i and itself, and no token sees it. The candidates' outputs are the
  same with or without shadows, so scoring and serving are unchanged.

Neither mask is the attention op's contract (docs/design.md), so these variants run a plain jnp
attention over an explicit [B, S, S] visibility mask: S^2 memory, fine at the ablation's sizes,
not a production path. A fully visible history cannot be served from a causal history cache, and
`genrank_jax.serving` refuses it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from genrank_jax.data.tokens import TokenBatch, TokenKind
from genrank_jax.kernels.masking import relative_bias


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ExplicitMask:
    """What the explicit-mask attention needs beyond q, k, v, for a sequence of S' tokens.

    visible: [B, S', S'] bool (query, key) pairs that attend; positions: [B, S'] int32;
    timestamps: [B, S'] float32; normalizer: [B] int32 (SiLU attention divides by it: the
    original sequence's length, as the attention op does).
    """

    visible: jax.Array
    positions: jax.Array
    timestamps: jax.Array
    normalizer: jax.Array


def sequence_visibility(lengths, num_candidates, seq_len: int, *, full_history: bool):
    """[B, S, S] bool: the attention op's mask, or with `full_history` history queries see every
    history key (before and after them)."""
    index = jnp.arange(seq_len)
    query, key = index[None, :, None], index[None, None, :]
    length, history = lengths[:, None, None], (lengths - num_candidates)[:, None, None]
    in_range = (query < length) & (key < length)
    history_query = (query < history) & (key < history if full_history else key <= query)
    candidate_query = (query >= history) & ((key < history) | (key == query))
    return in_range & (history_query | candidate_query)


def shadow_batch(batch: TokenBatch) -> TokenBatch:
    """The history exposures as candidates: same items, positions and times, no actions taken."""
    exposure = batch.kinds == TokenKind.EXPOSURE
    kinds = jnp.where(exposure, jnp.int8(TokenKind.CANDIDATE), jnp.int8(TokenKind.PAD)).astype(batch.kinds.dtype)
    return dataclasses.replace(batch, kinds=kinds, actions=jnp.zeros_like(batch.actions),
                               labels=batch.actions * exposure[..., None])


# TokenBatch fields with one entry per token (the rest are per row: user_ids, lengths, ...)
PER_TOKEN_FIELDS = ("item_ids", "kinds", "actions", "side", "content", "positions", "request_index", "gap_bucket",
                    "slot", "timestamps", "labels", "aggregates")


def with_shadows(batch: TokenBatch) -> TokenBatch:
    """[B, 2S] tokens: the sequence, then its shadows (`shadow_batch`) appended after it, so one
    pass embeds and runs both (the row fields, lengths and candidates, stay the sequence's)."""
    shadows = shadow_batch(batch)
    joined = {name: jnp.concatenate([getattr(batch, name), getattr(shadows, name)], axis=1)
              for name in PER_TOKEN_FIELDS if getattr(batch, name) is not None}
    return dataclasses.replace(batch, **joined)


def with_shadows_visibility(visible, batch: TokenBatch):
    """[B, 2S, 2S]: `visible` for the sequence, then shadow i sees history keys j < i and itself."""
    seq_len = batch.kinds.shape[1]
    exposure = batch.kinds == TokenKind.EXPOSURE  # [B, S]
    index = jnp.arange(seq_len)
    earlier = index[None, None, :] < index[None, :, None]  # key before query
    shadow_to_sequence = exposure[:, :, None] & exposure[:, None, :] & earlier
    shadow_to_shadow = exposure[:, :, None] & (index[None, None, :] == index[None, :, None])
    nothing = jnp.zeros_like(visible)
    return jnp.concatenate([jnp.concatenate([visible, nothing], axis=2),
                            jnp.concatenate([shadow_to_sequence, shadow_to_shadow], axis=2)], axis=1)


def masked_attention(q, k, v, mask: ExplicitMask, *, alibi_slopes, time_slopes, kind: str):
    """[B, S', H, Dv]: attention with the contract's bias and an explicit visibility mask.

    Padding cannot poison a valid output: invalid (query, key) pairs are replaced before the
    softmax or SiLU and rows that see nothing give 0.
    """
    scale = q.shape[-1] ** -0.5
    visible = mask.visible[:, None, :, :]  # [B, 1, S', S']
    per_head = lambda slopes: None if slopes is None else jax.lax.stop_gradient(slopes)[None, :, None, None]
    times = jax.lax.stop_gradient(mask.timestamps)
    bias = relative_bias(mask.positions[:, None, :, None], mask.positions[:, None, None, :],
                         times[:, None, :, None], times[:, None, None, :],
                         per_head(alibi_slopes), per_head(time_slopes))
    row_valid = jnp.any(mask.visible, axis=-1)  # [B, S'] queries that see something
    token_valid = row_valid | jnp.any(mask.visible, axis=1)  # ... or keys someone sees
    q, k, v = (jnp.where(token_valid[:, :, None, None], x, jnp.zeros((), x.dtype)) for x in (q, k, v))
    logits = jnp.einsum("bihd,bjhd->bhij", q.astype(jnp.float32), k.astype(jnp.float32)) * scale
    logits = jnp.where(visible, logits + bias, 0.0)
    if kind == "softmax":
        logits = jnp.where(visible, logits, -jnp.inf)
        row_max = jnp.max(logits, axis=-1, keepdims=True)
        weights = jnp.exp(logits - jnp.where(jnp.isfinite(row_max), row_max, 0.0))
        denom = jnp.sum(weights, axis=-1, keepdims=True)
        weights = weights / jnp.where(denom > 0, denom, 1.0)
    elif kind == "silu":
        weights = jnp.where(visible, jax.nn.silu(logits), 0.0)
        weights = weights / jnp.maximum(mask.normalizer, 1).astype(jnp.float32)[:, None, None, None]
    else:
        raise ValueError(f"kind must be 'softmax' or 'silu', got {kind!r}")
    out = jnp.einsum("bhij,bjhd->bihd", weights, v.astype(jnp.float32))
    return jnp.where(row_valid[:, :, None, None], out, 0.0).astype(v.dtype)


def explicit_mask(batch: TokenBatch, *, full_history: bool, shadows: bool) -> ExplicitMask:
    """The mask of the sequence (and of its shadows appended after it, when `shadows`)."""
    seq_len = batch.kinds.shape[1]
    visible = sequence_visibility(batch.lengths, batch.num_candidates, seq_len, full_history=full_history)
    positions, timestamps = batch.positions, batch.timestamps
    if shadows:
        visible = with_shadows_visibility(visible, batch)
        positions = jnp.concatenate([positions, positions], axis=1)
        timestamps = jnp.concatenate([timestamps, timestamps], axis=1)
    return ExplicitMask(visible=visible, positions=positions.astype(jnp.int32),
                        timestamps=timestamps.astype(jnp.float32), normalizer=batch.lengths.astype(jnp.int32))


__all__ = ["ExplicitMask", "explicit_mask", "masked_attention", "sequence_visibility", "shadow_batch",
           "with_shadows", "with_shadows_visibility"]
