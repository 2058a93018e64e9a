"""Multi-task loss: weighted binary cross-entropy at candidate tokens only.

The paper found that adding the loss at history positions hurts (one-epoch overfitting of sparse
ids), so history tokens never contribute; `candidate_and_history_bce` is that ablation.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from genrank_jax.data.tokens import TokenBatch, TokenKind


def candidate_bce(logits, batch: TokenBatch, task_weights=None):
    """(loss, per_task [A]): mean over candidate tokens of sum_t w_t * BCE(logits_t, labels_t)."""
    mask = batch.candidate_mask().astype(jnp.float32)  # [B, S]
    per_token = optax.sigmoid_binary_cross_entropy(logits, batch.labels)  # [B, S, A]
    count = jnp.maximum(mask.sum(), 1.0)
    per_task = jnp.einsum("bsa,bs->a", per_token, mask) / count
    weights = jnp.ones_like(per_task) if task_weights is None else jnp.asarray(task_weights, jnp.float32)
    return jnp.sum(per_task * weights), per_task


def candidate_and_history_bce(logits, history_logits, batch: TokenBatch, task_weights=None):
    """(loss, per_task [A]) of the `history_loss` ablation: the mean over candidate tokens and
    history exposures together, each history exposure labelled with the actions it got and scored
    by `GenRank.logits_with_history`."""
    candidates = batch.candidate_mask().astype(jnp.float32)
    history = (batch.kinds == TokenKind.EXPOSURE).astype(jnp.float32)
    total = (jnp.einsum("bsa,bs->a", optax.sigmoid_binary_cross_entropy(logits, batch.labels), candidates)
             + jnp.einsum("bsa,bs->a", optax.sigmoid_binary_cross_entropy(history_logits, batch.actions), history))
    per_task = total / jnp.maximum(candidates.sum() + history.sum(), 1.0)
    weights = jnp.ones_like(per_task) if task_weights is None else jnp.asarray(task_weights, jnp.float32)
    return jnp.sum(per_task * weights), per_task
