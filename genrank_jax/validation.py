"""Deprecated: `genrank_jax.validation` is now `genrank_jax.model.validation`; importing it warns."""

from genrank_jax._moved import alias_moved

alias_moved(__name__)
