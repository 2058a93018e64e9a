"""Baselines: the conventional ranker of the paper (DIN-style target attention + MLP), a
logistic user + item bias model, and the production baseline: a logistic regression (or small MLP)
on aggregate features of earlier requests.

It reads the same action-oriented token batch as GenRank: history tokens are its behaviour
sequence, each candidate token a target. The item-oriented HSTU-style baseline is `GenRank` with
`organization="item"`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from genrank_jax.data.aggregates import num_aggregates
from genrank_jax.data.tokens import TokenBatch, TokenKind
from genrank_jax.model.config import GenRankConfig
from genrank_jax.model.embeddings import ItemEmbedding, clipped, lookup, user_rows
from genrank_jax.typing import TaskLogits


def prior_log_odds(positive_rates):
    """[A] log-odds of each task's positive rate, clipped to (1e-6, 1 - 1e-6): a bias that starts
    a model at the base rates (see LogisticBias)."""
    rates = jnp.clip(jnp.asarray(positive_rates, jnp.float32), 1e-6, 1 - 1e-6)
    return jnp.log(rates) - jnp.log1p(-rates)


class DINRanker(nnx.Module):
    """score(candidate) = MLP([user, candidate, sum_j a(candidate, h_j) h_j, mean history]).

    h_j = item embedding + action embedding of history exposure j; a(.) is DIN's activation unit,
    an MLP over [c, h, c - h, c * h]. Attention weights are not normalized (as in DIN).
    """

    def __init__(self, config: GenRankConfig, *, rngs: nnx.Rngs):
        if config.organization != "action":
            raise ValueError("the DIN ranker reads action-oriented batches (organization='action')")
        width, init = config.width, nnx.initializers.normal(0.02)
        self.config = config
        self.items = ItemEmbedding(config, rngs=rngs)
        self.action_vectors = nnx.Param(init(rngs.params(), (config.features.num_actions, width)))
        self.user = nnx.Embed(config.table_rows(config.user_rows), width, embedding_init=init, rngs=rngs)
        self.gap = nnx.Embed(config.num_gap_buckets, width, embedding_init=init, rngs=rngs)
        self.slot = nnx.Embed(config.num_slots, width, embedding_init=init, rngs=rngs)
        self.attention_hidden = nnx.Linear(4 * width, width, rngs=rngs)
        self.attention_score = nnx.Linear(width, 1, rngs=rngs)
        hidden = config.mlp_ratio * width
        self.mlp = nnx.List([nnx.Linear(5 * width, hidden, rngs=rngs), nnx.Linear(hidden, hidden // 2, rngs=rngs)])
        self.out = nnx.Linear(hidden // 2, config.features.num_actions, rngs=rngs)

    def __call__(self, batch: TokenBatch) -> TaskLogits:
        """[B, S, A] logits at candidate tokens (zero elsewhere)."""
        items = self.items(batch.item_ids, batch.side, batch.content)  # [B, S, W]
        history_mask = batch.kinds == TokenKind.EXPOSURE  # [B, S]
        history = (items + batch.actions @ self.action_vectors[...]) * history_mask[..., None]
        # the request's recency and the display slot as context
        context = items + clipped(self.gap, batch.gap_bucket) + clipped(self.slot, batch.slot)
        gather = lambda x: jnp.take_along_axis(x, batch.candidate_index[..., None], axis=1, mode="clip")
        candidates = gather(context)  # [B, M, W]
        # activation unit over (candidate m, history j) pairs: [B, M, S, 4W]
        c, h = jnp.broadcast_arrays(candidates[:, :, None, :], history[:, None, :, :])
        pair = jnp.concatenate([c, h, c - h, c * h], axis=-1)
        weights = self.attention_score(jax.nn.sigmoid(self.attention_hidden(pair)))[..., 0]
        weights = weights * history_mask[:, None, :]
        interest = jnp.einsum("bmj,bjw->bmw", weights, history)
        count = jnp.maximum(history_mask.sum(-1, keepdims=True), 1)[..., None]
        mean_history = jnp.broadcast_to(history.sum(1, keepdims=True) / count, candidates.shape)
        user = lookup(self.user, user_rows(self.config, batch.user_ids))[:, None, :]
        x = jnp.concatenate([jnp.broadcast_to(user, candidates.shape), candidates, interest, mean_history,
                             candidates * mean_history], axis=-1)
        for layer in self.mlp:
            x = jax.nn.relu(layer(x))
        per_candidate = self.out(x)  # [B, M, A]
        logits = jnp.zeros(batch.item_ids.shape + (per_candidate.shape[-1],), per_candidate.dtype)
        rows = jnp.arange(logits.shape[0])[:, None]
        # empty slots point at index S, past the end: dropped
        return logits.at[rows, batch.candidate_index].set(per_candidate, mode="drop")


class LogisticBias(nnx.Module):
    """logit[t] = bias[t] + user_bias[u, t] + item_bias[i, t]: no sequence, no interactions.

    Start `bias` at the training data's log-odds (`set_prior`, which the Trainer calls): from
    bias 0, Adam moves every parameter about one learning rate per step it sees, so the rows of
    frequently shown items absorb most of the push from 0 down to a rare task's base rate (-4.4
    for `share`), and item biases end up ranked by exposure count instead of by engagement (AUC
    0.36 on `share` after the CLI's 1000 steps, below chance; see tests/test_baselines.py).
    """

    def __init__(self, config: GenRankConfig, *, rngs: nnx.Rngs):
        actions = config.features.num_actions
        self.config = config
        self.bias = nnx.Param(jnp.zeros((actions,)))
        self.user = nnx.Embed(config.table_rows(config.user_rows), actions,
                              embedding_init=nnx.initializers.normal(0.01), rngs=rngs)
        self.item = nnx.Embed(config.table_rows(config.features.num_items), actions,
                              embedding_init=nnx.initializers.normal(0.01), rngs=rngs)

    def set_prior(self, positive_rates) -> None:
        """Set the global bias to the log-odds of each task's positive rate [A]."""
        self.bias[...] = prior_log_odds(positive_rates)

    def __call__(self, batch: TokenBatch) -> TaskLogits:
        user = lookup(self.user, user_rows(self.config, batch.user_ids))[:, None, :]
        return self.bias[...] + user + lookup(self.item, batch.item_ids)


class FeaturesRanker(nnx.Module):
    """logit[t] = w_t . x (+ an MLP of `features_hidden` units when > 0): x the candidate's aggregate
    features (`genrank_jax.data.aggregates`: item, user and user-on-side-feature action rates,
    counts, recency; from earlier requests only). What a ranking team fits on day one; every
    sequence model must beat it. Starts at the base rates like `LogisticBias`."""

    def __init__(self, config: GenRankConfig, *, rngs: nnx.Rngs):
        actions, inputs, hidden = config.features.num_actions, num_aggregates(config.features), config.features_hidden
        self.hidden = nnx.Linear(inputs, hidden, rngs=rngs) if hidden else None
        self.out = nnx.Linear(hidden or inputs, actions, kernel_init=nnx.initializers.normal(0.01), rngs=rngs)

    def set_prior(self, positive_rates) -> None:
        self.out.bias[...] = prior_log_odds(positive_rates)

    def __call__(self, batch: TokenBatch) -> TaskLogits:
        if batch.aggregates is None:
            raise ValueError("the features ranker needs batches with aggregates (SampleLayout(aggregates=True))")
        x = batch.aggregates
        if self.hidden is not None:
            x = jax.nn.relu(self.hidden(x))
        return self.out(x)  # [B, S, A]; only candidate tokens' logits are read


def build_model(config: GenRankConfig, *, rngs: nnx.Rngs):
    """GenRank (either organization), the DIN ranker, the logistic bias model or the features
    ranker, as configured."""
    from genrank_jax.model.genrank import GenRank

    models = {"genrank": GenRank, "din": DINRanker, "logistic": LogisticBias, "features": FeaturesRanker}
    return models[config.architecture](config, rngs=rngs)
