"""Deprecated: `genrank_jax.export` is now `genrank_jax.serving.export`; importing it warns."""

from genrank_jax._moved import alias_moved

alias_moved(__name__)
