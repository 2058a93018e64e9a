"""Deprecated: `genrank_jax.curves` is now `genrank_jax.training.curves`; importing it warns."""

from genrank_jax._moved import alias_moved

alias_moved(__name__)
