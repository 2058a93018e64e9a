"""Deprecated: `genrank_jax.embeddings` is now `genrank_jax.model.embeddings`; importing it warns."""

from genrank_jax._moved import alias_moved

alias_moved(__name__)
