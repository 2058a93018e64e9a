"""Deprecated: `genrank_jax.streaming` is now `genrank_jax.training.streaming`; importing it warns."""

from genrank_jax._moved import alias_moved

alias_moved(__name__)
