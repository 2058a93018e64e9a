"""Deprecated: `genrank_jax.output_folder` is now `genrank_jax.cli.output_folder`; importing it warns."""

from genrank_jax._moved import alias_moved

alias_moved(__name__)
