"""Deprecated: `genrank_jax.scorer` is now `genrank_jax.serving.scorer`; importing it warns."""

from genrank_jax._moved import alias_moved

alias_moved(__name__)
