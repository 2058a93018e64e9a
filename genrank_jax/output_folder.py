"""Output folders that are never half-written and never replaced by accident.

Every command that writes a folder (`simulate`, `export`, `lis`; `train` keeps its own rules for
checkpoints) follows one rule: an `--out` that holds files is refused unless `--overwrite`; the
new files are written into a hidden sibling folder, which is renamed into place only when all of
them are written (the old folder is moved aside first and deleted last). A crash leaves the old
folder as it was, or nothing, never a mix.
"""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import uuid
from collections.abc import Iterator


def check_free(out: str | pathlib.Path, *, overwrite: bool) -> pathlib.Path:
    """`out` as a Path; OutputInUseError if it is a file, or a folder holding files without `overwrite`."""
    from genrank_jax.training import OutputInUseError

    out = pathlib.Path(out)
    if out.exists() and not out.is_dir():
        raise OutputInUseError(f"{out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputInUseError(f"{out} already holds files ({', '.join(sorted(p.name for p in out.iterdir())[:4])})",
                               hint="pass overwrite=True to replace them",
                               cli_hint="replace them with --overwrite or choose another --out")
    return out


@contextlib.contextmanager
def written_whole(out: str | pathlib.Path, *, overwrite: bool) -> Iterator[pathlib.Path]:
    """Yield a fresh folder to write into; on success it becomes `out` (see the module docstring)."""
    final = check_free(out, overwrite=overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex[:8]}")
    partial.mkdir()
    try:
        yield partial
        if final.exists():
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            final.rename(old)
            partial.rename(final)
            shutil.rmtree(old)
        else:
            partial.rename(final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
