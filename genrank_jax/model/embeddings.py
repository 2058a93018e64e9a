"""Token embeddings (paper Eq. 1): item part + action part + position, request and time terms.

All embedding-table lookups of the token models happen here, so partition rules (tables split by
rows over a mesh) and a serving cache have one place to attach.

Lookups are safe without `validate_batch` (a bare `nnx.Embed` returns NaN rows for ids past its
table, which would poison every token of the row through attention):
- item and side-feature ids outside their table are masked: they give a zero row, as NO_ITEM
  does (`lookup`);
- an unknown user (a negative id, or one >= features.num_users when ids are not hashed into
  `num_user_buckets`) gets the unknown-user row: a zero user vector, so the model ranks from the
  history alone (`user_rows`). The id is never wrapped onto another real user's row. Serving
  raises for unknown users when ids are concrete; this row is what jitted and exported code uses;
- positions, request indices, gap buckets and slots are clipped into their table (`clipped`): the
  last row stands for "this many or more", the first for negative values.
`validate_batch` still rejects such ids when they are concrete, naming the field and row.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from genrank_jax.data.aggregates import num_aggregates
from genrank_jax.data.tokens import TokenBatch, TokenKind
from genrank_jax.model.config import GenRankConfig


def lookup(table: nnx.Embed, ids, present=None):
    """Rows of `table` for `ids` (any shape); zero where `present` is False or ids lie outside
    [0, table rows) (NO_ITEM < 0, or out of the vocabulary: masked, never NaN)."""
    inside = (ids >= 0) & (ids < table.num_embeddings)
    present = inside if present is None else present & inside
    rows = table(jnp.clip(ids, 0, table.num_embeddings - 1))
    return rows * present[..., None].astype(rows.dtype)


UNKNOWN_USER = -1  # the row `user_rows` gives an unknown user: `lookup` turns it into zeros


def user_rows(config, user_ids):
    """User-table rows of model user ids: `id % user_rows` for known ids (hashed into
    `num_user_buckets` when set: any id >= 0 is known then), UNKNOWN_USER for the rest."""
    known = user_ids >= 0
    if not config.num_user_buckets:
        known = known & (user_ids < config.features.num_users)
    return jnp.where(known, user_ids % config.user_rows, UNKNOWN_USER)


def clipped(table: nnx.Embed, ids):
    """Rows of `table` for `ids` clipped into [0, table rows): for ordinal ids (positions, counts, buckets)."""
    return table(jnp.clip(ids, 0, table.num_embeddings - 1))


class ItemEmbedding(nnx.Module):
    """phi(x): item id + categorical side features + projected frozen content embedding."""

    def __init__(self, config: GenRankConfig, *, rngs: nnx.Rngs):
        features, width = config.features, config.width
        init = nnx.initializers.normal(0.02)
        self.item = nnx.Embed(config.table_rows(features.num_items), width, embedding_init=init, rngs=rngs)
        self.side = nnx.List([nnx.Embed(config.table_rows(size), width, embedding_init=init, rngs=rngs)
                              for size in features.side_vocab_sizes])
        self.content = (nnx.Linear(features.content_dim, width, use_bias=False, rngs=rngs)
                        if features.content_dim else None)

    def __call__(self, item_ids, side, content):
        """item_ids [...]: NO_ITEM (< 0) gives zeros; side [..., F] int; content [..., C] float."""
        present = item_ids >= 0
        x = lookup(self.item, item_ids)
        for f, table in enumerate(self.side):
            x = x + lookup(table, side[..., f], present)
        if self.content is not None:
            x = x + self.content(content) * present[..., None]
        return x


class TokenEmbedding(nnx.Module):
    """e = phi(item) + psi(actions) [+ M on candidates] + position + request index + gap + slot + user.

    The slot (index inside the request) is not in the paper's Eq. 1; it carries display-position
    bias, which feeds show in every log. Set all slots to 0 where positions are unknown.

    psi(actions) sums one learned vector per action taken. The mask-action vector M marks
    action-oriented candidates (item-oriented candidates are plain item tokens, as in HSTU).
    """

    def __init__(self, config: GenRankConfig, *, rngs: nnx.Rngs):
        width, init = config.width, nnx.initializers.normal(0.02)
        self.config = config
        self.items = ItemEmbedding(config, rngs=rngs)
        self.action_vectors = nnx.Param(init(rngs.params(), (config.features.num_actions, width)))
        # every action-token carries this even when no action was taken (a pure exposure)
        self.exposure_vector = nnx.Param(init(rngs.params(), (width,)))
        self.mask_action = nnx.Param(init(rngs.params(), (width,)))
        self.position = nnx.Embed(config.max_tokens, width, embedding_init=init, rngs=rngs)
        self.request = nnx.Embed(config.num_request_slots, width, embedding_init=init, rngs=rngs)
        self.gap = nnx.Embed(config.num_gap_buckets, width, embedding_init=init, rngs=rngs)
        self.slot = nnx.Embed(config.num_slots, width, embedding_init=init, rngs=rngs)
        self.user = (nnx.Embed(config.table_rows(config.user_rows), width, embedding_init=init, rngs=rngs)
                     if config.use_user_embedding else None)
        self.aggregates = (nnx.Linear(num_aggregates(config.features), width, use_bias=False, kernel_init=init,
                                      rngs=rngs) if config.use_aggregates else None)

    def __call__(self, batch: TokenBatch, extra=None):
        """[B, S, W] token embeddings; zero on padding.

        extra: optional [B, S, W] added to every token before the padding mask (a hook for probes
        that inject an outside feature, e.g. a projected per-item vector, without a new table).
        """
        kinds = batch.kinds
        valid = kinds != TokenKind.PAD
        x = self.items(batch.item_ids, batch.side, batch.content)
        carries_actions = (kinds == TokenKind.EXPOSURE) | (kinds == TokenKind.ACTION)
        x = x + (batch.actions @ self.action_vectors[...]
                 + carries_actions[..., None] * self.exposure_vector[...])
        if self.config.organization == "action":
            x = x + (kinds == TokenKind.CANDIDATE)[..., None] * self.mask_action[...]
        x = x + clipped(self.position, batch.positions) + clipped(self.request, batch.request_index)
        x = x + clipped(self.gap, batch.gap_bucket) + clipped(self.slot, batch.slot)
        if self.user is not None:
            x = x + lookup(self.user, user_rows(self.config, batch.user_ids))[:, None, :]
        if self.aggregates is not None:
            if batch.aggregates is None:
                raise ValueError("use_aggregates needs batches with aggregates (SampleLayout(aggregates=True))")
            x = x + self.aggregates(batch.aggregates)
        if extra is not None:
            x = x + extra
        return x * valid[..., None]
