"""Deprecated: `genrank_jax.command_line` is now `genrank_jax.cli.command_line`; importing it warns."""

from genrank_jax._moved import alias_moved

alias_moved(__name__)
