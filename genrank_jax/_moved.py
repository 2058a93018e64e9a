"""The module paths the package layout moved (issue 23), and the shims that keep the old ones importable.

Each old module (`genrank_jax/config.py`, ...) is a shim that calls `alias_moved`: the old name then
*is* the new module (one module object under two names), so every name resolves, private ones
included, and a monkeypatch through the old path patches the code that runs. Importing it warns once
with the new path; nothing inside the project imports an old path (tests/test_layout.py checks).
"""

from __future__ import annotations

import importlib
import sys
import warnings

# old module -> the module it is now (both under genrank_jax)
MOVED = {
    "config": "model.config",
    "blocks": "model.blocks",
    "embeddings": "model.embeddings",
    "baselines": "model.baselines",
    "history_variants": "model.history_variants",
    "losses": "model.losses",
    "validation": "model.validation",
    "streaming": "training.streaming",
    "checkpoint": "training.checkpoint",
    "defaults": "training.defaults",
    "curves": "training.curves",
    "scorer": "serving.scorer",
    "export": "serving.export",
    "command_line": "cli.command_line",
    "dry_run": "cli.dry_run",
    "output_folder": "cli.output_folder",
    "simulate_command": "cli.simulate_command",
}


def _importer_stacklevel() -> int:
    """The stacklevel of the `import` the warning is about, past this module, the shim,
    `importlib.import_module` and `genrank_jax.__getattr__` (warnings skips the frozen import
    machinery's frames by itself), so that warning filters by module see the importer."""
    skipped = (__name__, "importlib", "genrank_jax", *("genrank_jax." + old for old in MOVED))
    frame, level = sys._getframe(1), 1
    while frame is not None and (frame.f_code.co_filename.startswith("<frozen importlib")
                                 or frame.f_globals.get("__name__") in skipped):
        if not frame.f_code.co_filename.startswith("<frozen importlib"):
            level += 1
        frame = frame.f_back
    return level


def alias_moved(old: str) -> None:
    """Called by the shim `old` as it runs: warn, then make `sys.modules[old]` the new module."""
    new = "genrank_jax." + MOVED[old.removeprefix("genrank_jax.")]
    warnings.warn(f"{old} is now {new}; import it from there", DeprecationWarning, stacklevel=_importer_stacklevel())
    # the import system reads sys.modules[old] back after the shim runs, so `import old` binds the new module
    sys.modules[old] = importlib.import_module(new)
