"""Deprecated: `genrank_jax.config` is now `genrank_jax.model.config`; importing it warns."""

from genrank_jax._moved import alias_moved

alias_moved(__name__)
