"""Deprecated: `genrank_jax.checkpoint` is now `genrank_jax.training.checkpoint`; importing it warns."""

from genrank_jax._moved import alias_moved

alias_moved(__name__)
