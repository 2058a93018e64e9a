"""Deprecated: `genrank_jax.dry_run` is now `genrank_jax.cli.dry_run`; importing it warns."""

from genrank_jax._moved import alias_moved

alias_moved(__name__)
