"""Deprecated: `genrank_jax.blocks` is now `genrank_jax.model.blocks`; importing it warns."""

from genrank_jax._moved import alias_moved

alias_moved(__name__)
