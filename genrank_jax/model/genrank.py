"""GenRank: a generative ranking transformer over action-oriented (or item-oriented) tokens."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from genrank_jax.data.aggregates import num_aggregates
from genrank_jax.data.tokens import TokenBatch
from genrank_jax.model import history_variants
from genrank_jax.model.blocks import BLOCKS, RelativeAttention
from genrank_jax.model.config import GenRankConfig
from genrank_jax.model.embeddings import TokenEmbedding
from genrank_jax.model.history_variants import ExplicitMask
from genrank_jax.serving import history_cache
from genrank_jax.typing import AttentionOut, Hidden, Keys, Queries, TaskLogits, Values

# How one block attends on a given path: (block index, the block's attention module, q, k, v) ->
# (attended [B, S, H, Dv], the block's keys and values after this pass). The full pass returns
# k, v (what encoding caches); cached scoring returns the cache's; append the cache with k, v added.
BlockAttention = Callable[[int, RelativeAttention, Queries, Keys, Values], tuple[AttentionOut, Keys, Values]]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ForwardPass:
    """What `GenRank.forward` returns.

    logits: [B, S, A] float32 (None when asked without)    hidden: [B, S, W] the last block's output
    keys, values: one [B, *, H, D] / [B, *, H, Dv] per block, as `attend` returned them
    """

    logits: TaskLogits | None
    hidden: Hidden
    keys: tuple
    values: tuple


def attend_over(batch: TokenBatch, mask: ExplicitMask | None = None) -> BlockAttention:
    """Every block runs the attention op over `batch`'s jagged layout (or, with `mask`, the
    research variants' explicit-mask attention) and keeps its own keys and values."""
    def attend(index: int, attention: RelativeAttention, q, k, v):
        return attention(q, k, v, batch, mask), k, v

    return attend


class TaskHeads(nnx.Module):
    """One logit per action type from each token's final state."""

    def __init__(self, width: int, num_actions: int, *, rngs: nnx.Rngs, zero: bool = False):
        self.norm = nnx.RMSNorm(width, rngs=rngs)
        init = nnx.initializers.zeros if zero else nnx.initializers.lecun_normal()
        self.logits = nnx.Linear(width, num_actions, kernel_init=init, rngs=rngs)

    def __call__(self, x):
        return self.logits(self.norm(x))


class GenRank(nnx.Module):
    """Token embedding -> blocks (causal history, candidates see history and themselves) -> heads.

    `config.organization` picks the token layout the batch was built with ("action": N + M tokens,
    GenRank; "item": 2N + M, the HSTU-style baseline); `config.block` the block type.
    """

    def __init__(self, config: GenRankConfig, *, rngs: nnx.Rngs):
        if config.architecture != "genrank":
            raise ValueError(f"GenRank needs architecture='genrank', got {config.architecture!r}; "
                             "use genrank_jax.build_model for the baselines")
        self.config = config
        self.embed = TokenEmbedding(config, rngs=rngs)
        self.blocks = nnx.List([BLOCKS[config.block](config, rngs=rngs) for _ in range(config.num_blocks)])
        # a zero_deep_head model starts as the wide path alone (a logistic regression on the
        # aggregates) and the sequence part earns its say: a random head would start as noise
        self.heads = TaskHeads(config.width, config.features.num_actions, rngs=rngs,
                               zero=config.use_aggregates and config.aggregates_wide and config.zero_deep_head)
        # with aggregates, also a linear "wide" path from them straight to the logits (Wide & Deep):
        # the features baseline is then a special case the sequence model only has to improve on
        self.wide = (nnx.Linear(num_aggregates(config.features), config.features.num_actions, use_bias=False,
                                kernel_init=nnx.initializers.zeros, rngs=rngs)
                     if config.use_aggregates and config.aggregates_wide else None)

    def __call__(self, batch: TokenBatch, extra_embeddings=None) -> TaskLogits:
        """[B, S, A] logits; only candidate tokens' logits are meaningful.

        extra_embeddings: optional [B, S, W] added to the token embeddings (see `TokenEmbedding`).
        """
        mask = (history_variants.explicit_mask(batch, full_history=True, shadows=False)
                if self.config.history_mask == "full" else None)
        return self.forward(batch, attend_over(batch, mask), extra_embeddings=extra_embeddings).logits

    def logits_with_history(self, batch: TokenBatch) -> tuple[TaskLogits, TaskLogits]:
        """([B, S, A] as `__call__`, [B, S, A] logits of each history exposure scored as a candidate
        from the history before it): the `history_loss` ablation's training pass
        (`genrank_jax.model.history_variants`). The first is equal to `__call__`'s."""
        seq_len = batch.kinds.shape[1]
        joined = history_variants.with_shadows(batch)
        mask = history_variants.explicit_mask(batch, full_history=self.config.history_mask == "full", shadows=True)
        logits = self.forward(joined, attend_over(joined, mask)).logits
        return logits[:, :seq_len], logits[:, seq_len:]

    def forward(self, tokens: TokenBatch, attend: BlockAttention, *, extra_embeddings=None,
                with_logits: bool = True) -> ForwardPass:
        """The one forward path: embed `tokens`, run every block (its attention by `attend`), heads.

        Training, the research variants, history encoding, cached scoring and `append` all come
        here and differ only in `attend`, so a change to the blocks or heads reaches every path.
        with_logits: False skips the heads (encoding and append keep only keys and values).
        """
        x = self.embed(tokens, extra_embeddings).astype(jnp.dtype(self.config.dtype))
        keys, values = [], []
        for index, block in enumerate(self.blocks):
            q, k, v, carry = block.project(x)
            attended, k, v = attend(index, block.attention, q, k, v)
            x = block.finish(x, attended, carry)
            keys.append(k)
            values.append(v)
        logits = self._logits(x, tokens.aggregates) if with_logits else None
        return ForwardPass(logits=logits, hidden=x, keys=tuple(keys), values=tuple(values))

    def _logits(self, x, aggregates) -> TaskLogits:
        logits = self.heads(x).astype(jnp.float32)
        return logits if self.wide is None else logits + self.wide(aggregates)

    def encode_history(self, history: history_cache.History, *, num_candidates=None,
                       capacity: int | None = None) -> history_cache.HistoryCache:
        """Per-block keys and values of `history` (see `genrank_jax.serving`).

        num_candidates: [B] the request's candidate count (HSTU blocks only: their attention divides
        by history + candidates). capacity: history tokens the cache can hold (default: N).
        """
        return history_cache.encode_history(self, history, num_candidates=num_candidates, capacity=capacity)

    def score(self, cache: history_cache.HistoryCache, candidates: history_cache.Candidates, *, impl=None):
        """[B, M, A] logits of `candidates` against `cache`: equal to the full pass on history + candidates."""
        return history_cache.score(self, cache, candidates, impl=impl)
