"""Output folders that are never half-written, never replaced by accident, and never collide.

Every command that writes a folder (`simulate`, `export`, `lis`; `train` keeps its own rules for
checkpoints) follows one rule: an `--out` that holds files is refused unless `--overwrite`; the
new files are written into a hidden sibling folder, which is renamed into place only when all of
them are written (the old folder is moved aside first and deleted last). A crash leaves the old
folder as it was, or nothing, never a mix.

Without `--out` a command writes to the next free `runs/<command>-N` (`run_folder`), reserved by
creating it, so two runs started together never share one; `--resume` without `--out` takes the
newest (`newest_run`). A run that fails before it saved anything removes the folders it created,
its reserved one and any missing parents, and only those (`CreatedFolders`): a folder that existed
before the run is never removed.
"""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import uuid
from collections.abc import Callable, Iterator

RUNS = pathlib.Path("runs")


def check_free(out: str | pathlib.Path, *, overwrite: bool) -> pathlib.Path:
    """`out` as a Path; OutputInUseError if it is a file, or a folder holding files without `overwrite`."""
    from genrank_jax.training.trainer import OutputInUseError

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
    """Yield a fresh folder to write into; on success it becomes `out` (see the module docstring).
    Parent folders it had to create are removed again if the writing fails."""
    final = check_free(out, overwrite=overwrite)
    created = CreatedFolders()
    created.make(final.parent, own=False)
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
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        created.remove()
        raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


class CreatedFolders:
    """The folders a run created (its output folder and the missing parents above it), so that a run
    that fails before saving anything can remove them again, and only them."""

    def __init__(self):
        self.folders: list[pathlib.Path] = []  # outermost first
        self.owned: pathlib.Path | None = None  # the run's own folder, when this created it

    def make(self, folder: str | pathlib.Path, *, exist_ok: bool = True, own: bool = True) -> pathlib.Path:
        """mkdir -p `folder`, recording each folder this call created. With `exist_ok=False`
        FileExistsError if `folder` itself exists (how a numbered run folder is reserved). `own`:
        `folder` is the run's own, removed with its contents; other created folders are removed
        only while empty."""
        folder = pathlib.Path(folder)
        for path in [*reversed(folder.parents), folder]:
            if path.is_dir() and path != folder:
                continue
            try:
                path.mkdir()
            except FileExistsError:
                if path == folder and not exist_ok:
                    raise
                if not path.is_dir():
                    raise
                continue  # there already, or made meanwhile by another process: not ours to remove
            self.folders.append(path)
            if path == folder and own:
                self.owned = folder
        return folder

    def remove(self) -> None:
        """Remove what `make` created, innermost first: the run's own folder with whatever it holds
        (this run made it), each parent only while empty (another run may have written there since)."""
        for path in reversed(self.folders):
            if path == self.owned:
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    path.rmdir()
                except OSError:
                    break  # not empty: neither it nor anything above it is this run's alone
        self.folders.clear()
        self.owned = None


def _number(folder: pathlib.Path, command: str) -> int | None:
    prefix = f"{command}-"
    suffix = folder.name[len(prefix):]
    return int(suffix) if folder.name.startswith(prefix) and suffix.isdigit() else None


def _numbered(command: str, root: str | pathlib.Path) -> list[tuple[int, pathlib.Path]]:
    root = pathlib.Path(root)
    if not root.is_dir():
        return []
    return sorted((n, p) for p in root.iterdir() if (n := _number(p, command)) is not None)


def numbered_runs(command: str, root: str | pathlib.Path = RUNS) -> list[pathlib.Path]:
    """The `<root>/<command>-N` folders that exist, by N (oldest first)."""
    return [p for _, p in _numbered(command, root) if p.is_dir()]


def next_run(command: str, root: str | pathlib.Path = RUNS) -> pathlib.Path:
    """`<root>/<command>-N` for the N after the highest one taken there, by a folder or anything
    else (1 when there is none); not created."""
    taken = _numbered(command, root)
    return pathlib.Path(root) / f"{command}-{taken[-1][0] + 1 if taken else 1}"


def reserve_run(command: str, created: CreatedFolders, root: str | pathlib.Path = RUNS) -> pathlib.Path:
    """Create and return the next free `<root>/<command>-N`: a run started at the same moment gets another N."""
    while True:
        folder = next_run(command, root)
        try:
            return created.make(folder, exist_ok=False)
        except FileExistsError:
            continue


def newest_run(command: str, root: str | pathlib.Path = RUNS) -> pathlib.Path | None:
    """The `<root>/<command>-N` with the highest N, or None."""
    runs = numbered_runs(command, root)
    return runs[-1] if runs else None


def default_out_note(command: str) -> str:
    return f"the next free {RUNS}/{command}-N; --out chooses another"


@contextlib.contextmanager
def removed_unless_saved(created: CreatedFolders, saved: Callable[[], bool]) -> Iterator[CreatedFolders]:
    """Run the body; if it raises (Ctrl-C included) and `saved()` is false, remove the folders in
    `created` (see `CreatedFolders.remove`). A run that saved something keeps its folder."""
    try:
        yield created
    except BaseException:
        try:
            nothing = not saved()
        except OSError:
            nothing = False  # cannot tell: keep everything
        if nothing:
            created.remove()
        raise


def holds_files(folder: str | pathlib.Path) -> bool:
    """Whether `folder` holds anything besides a writer lock (what a written_whole command saved)."""
    folder = pathlib.Path(folder)
    return folder.is_dir() and any(p.name != LOCK_NAME for p in folder.iterdir())


LOCK_NAME = ".genrank-jax.lock"


@contextlib.contextmanager
def writer_lock(folder: str | pathlib.Path, command: str) -> Iterator[None]:
    """Hold `folder`'s writer lock for a run: a second run into the same folder is refused with the
    first one's pid (two writers would interleave their checkpoints). A lock left by a process that
    no longer runs (killed) is taken over."""
    import os
    import socket

    from genrank_jax.training.trainer import OutputInUseError

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
            raise _locked(folder, lock, holder) from None
    else:  # never go on without the lock: two writers would interleave their checkpoints
        raise OutputInUseError(f"could not take the lock {lock}: other runs keep taking it",
                               cli_hint="choose another --out")
    with os.fdopen(descriptor, "w") as handle:
        handle.write(me)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _locked(folder, lock: pathlib.Path, holder: list[str]):
    from genrank_jax.training.trainer import OutputInUseError

    pid, host = (int(holder[0]), holder[1]) if len(holder) >= 2 and holder[0].isdigit() else (None, None)
    who = f"process {pid} on {host}, {' '.join(holder[2:]) or 'genrank-jax'}" if pid else "starting"
    return OutputInUseError(f"{folder} is being written by another run ({who}); its lock is {lock}",
                            cli_hint="wait for it, or choose another --out; delete the lock only if "
                                     "that process is gone")


def check_unlocked(folder: str | pathlib.Path) -> None:
    """The refusal `writer_lock` would give for `folder` (another run holds its lock), without taking it."""
    import socket

    lock = pathlib.Path(folder) / LOCK_NAME
    try:
        holder = lock.read_text().split()
    except (FileNotFoundError, NotADirectoryError):
        return
    pid, host = (int(holder[0]), holder[1]) if len(holder) >= 2 and holder[0].isdigit() else (None, None)
    if pid is not None and host == socket.gethostname() and not _alive(pid):
        return  # stale: the run would take it over
    raise _locked(folder, lock, holder)


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
