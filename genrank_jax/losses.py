"""Deprecated: `genrank_jax.losses` is now `genrank_jax.model.losses`; importing it warns."""

from genrank_jax._moved import alias_moved

alias_moved(__name__)
