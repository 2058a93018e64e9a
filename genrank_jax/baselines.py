"""Deprecated: `genrank_jax.baselines` is now `genrank_jax.model.baselines`; importing it warns."""

from genrank_jax._moved import alias_moved

alias_moved(__name__)
