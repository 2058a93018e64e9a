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


LOCK_NAME = ".genrank-jax.lock"


@contextlib.contextmanager
def writer_lock(folder: str | pathlib.Path, command: str) -> Iterator[None]:
    """Hold `folder`'s writer lock for a run: a second run into the same folder is refused with the
    first one's pid (two writers would interleave their checkpoints). A lock left by a process that
    no longer runs (killed) is taken over."""
    import os
    import socket

    from genrank_jax.training import OutputInUseError

    lock = pathlib.Path(folder) / LOCK_NAME
    me = f"{os.getpid()} {socket.gethostname()} {command}"
    for _ in range(3):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                holder = lock.read_text().split()
            except FileNotFoundError:
                continue  # released meanwhile
            pid, host = (int(holder[0]), holder[1]) if len(holder) >= 2 and holder[0].isdigit() else (None, None)
            if pid is not None and host == socket.gethostname() and not _alive(pid):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            who = f"process {pid} on {host}, {' '.join(holder[2:]) or 'genrank-jax'}" if pid else "starting"
            raise OutputInUseError(f"{folder} is being written by another run ({who}); its lock is {lock}",
                                   cli_hint="wait for it, or choose another --out; delete the lock only if "
                                            "that process is gone") from None
    else:  # never go on without the lock: two writers would interleave their checkpoints
        raise OutputInUseError(f"could not take the lock {lock}: other runs keep taking it",
                               cli_hint="choose another --out")
    with os.fdopen(descriptor, "w") as handle:
        handle.write(me)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
