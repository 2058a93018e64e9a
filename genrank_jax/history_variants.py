"""Deprecated: `genrank_jax.history_variants` is now `genrank_jax.model.history_variants`; importing it warns."""

from genrank_jax._moved import alias_moved

alias_moved(__name__)
