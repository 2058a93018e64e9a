"""Deprecated: `genrank_jax.defaults` is now `genrank_jax.training.defaults`; importing it warns."""

from genrank_jax._moved import alias_moved

alias_moved(__name__)
