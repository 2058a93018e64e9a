"""Deprecated: `genrank_jax.simulate_command` is now `genrank_jax.cli.simulate_command`; importing it warns."""

from genrank_jax._moved import alias_moved

alias_moved(__name__)
