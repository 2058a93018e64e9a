"""Reading raw log files: locating them, parsing delimited rows, and reporting bad ones.

Every error names the file (and, for a bad row, its 1-based line number) because the files
are the user's own downloads: the message has to tell them what to fix or fetch.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)


class MissingFileError(FileNotFoundError):
    """A raw input file is not in the manual directory."""


class MalformedRowError(ValueError):
    """A row of a raw file cannot be parsed (message: `path:line: reason: row`)."""


def find_file(manual_dir: pathlib.Path, names: Sequence[str], *, subdirs: Sequence[str] = ()) -> pathlib.Path | None:
    """First of `names` found in manual_dir or one of its `subdirs` (in that order); None if none is there."""
    for folder in (manual_dir, *(manual_dir / sub for sub in subdirs)):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def require_file(manual_dir: pathlib.Path, name: str, *, subdirs: Sequence[str] = (), source: str) -> pathlib.Path:
    """Path of `name` in manual_dir (or a subdir); MissingFileError naming it and where to get it."""
    path = find_file(manual_dir, [name], subdirs=subdirs)
    if path is None:
        looked = ", ".join(str(f) for f in (manual_dir, *(manual_dir / s for s in subdirs)))
        raise MissingFileError(f"{name} not found (looked in {looked}); {source}")
    return path


@dataclasses.dataclass
class BadRows:
    """Skips or raises on malformed rows; counts skipped rows per file name."""

    skip: bool = False
    counts: dict[str, int] = dataclasses.field(default_factory=dict)

    def report(self, path: pathlib.Path, line_no: int, reason: str, row: object) -> None:
        message = f"{path}:{line_no}: {reason}: {row!r}"
        if not self.skip:
            raise MalformedRowError(message + " (pass skip_bad_rows=True to skip such rows)")
        self.counts[path.name] = self.counts.get(path.name, 0) + 1
        if self.counts[path.name] <= 3:  # the first few say what is wrong; the total comes at the end
            log.warning("skipping malformed row %s", message)

    def summarize(self) -> None:
        for name, count in sorted(self.counts.items()):
            log.warning("skipped %d malformed rows of %s", count, name)


def _split_lines(path: pathlib.Path, sep: str, encoding: str) -> Iterator[tuple[int, list[str]]]:
    with open(path, encoding=encoding, newline="") as f:
        if sep == ",":  # CSV may quote fields holding commas (MovieLens titles, KuaiRand tag lists)
            reader = csv.reader(f)
            for fields in reader:
                yield reader.line_num, fields
        else:
            for line_no, line in enumerate(f, 1):
                yield line_no, line.rstrip("\r\n").split(sep)


CHUNK_ROWS = 1 << 20  # parsed values move from Python lists into numpy every this many rows


def read_table(path: pathlib.Path, columns: Mapping[str | int, Callable[[str], object]], *, sep: str,
               header: bool, bad: BadRows, encoding: str = "utf-8") -> dict[str | int, np.ndarray]:
    """Parse the `columns` of a delimited file into arrays, one per column key.

    Keys are column names when `header` (RecBole's `name:type` headers match by `name`) or
    0-based positions otherwise. A row with too few fields, or a value its converter rejects
    (ValueError), goes to `bad`. Blank lines are ignored. Python objects cost ~36 bytes a value,
    so rows are packed into numpy chunks as they come (20M-row logs stay well under a GB).
    """
    out: dict[str | int, list] = {key: [] for key in columns}
    chunks: dict[str | int, list[np.ndarray]] = {key: [] for key in columns}
    index: dict[str | int, int] = {}
    lines = _split_lines(path, sep, encoding)
    if header:
        try:
            _, names = next(lines)
        except StopIteration:
            raise MalformedRowError(f"{path}:1: empty file, expected a header row") from None
        names = [name.strip().split(":")[0] for name in names]
        for key in columns:
            if key not in names:
                raise MalformedRowError(f"{path}:1: header has no column {key!r}: {names}")
            index[key] = names.index(key)
    else:
        index = {key: int(key) for key in columns}
    width = max(index.values()) + 1
    converters = [(out[key], columns[key], i) for key, i in index.items()]
    for line_no, fields in lines:
        if not fields or fields == [""]:
            continue
        if len(fields) < width:
            bad.report(path, line_no, f"expected at least {width} fields, got {len(fields)}", fields)
            continue
        try:
            values = [convert(fields[i]) for _, convert, i in converters]
        except ValueError as error:
            bad.report(path, line_no, f"bad value ({error})", fields)
            continue
        for (target, _, _), value in zip(converters, values):
            target.append(value)
        if len(converters[0][0]) == CHUNK_ROWS:
            for key in columns:
                chunks[key].append(np.asarray(out[key]))
                out[key].clear()
    return {key: np.concatenate([*chunks[key], np.asarray(out[key])]) if chunks[key] else np.asarray(out[key])
            for key in columns}


def dense_codes(values: Sequence[str]) -> tuple[np.ndarray, int]:
    """Categorical codes: 0 for missing ("" or None), else 1 + rank among the sorted distinct values.

    Returns (codes [N] int32, vocabulary size including the missing code).
    """
    present = sorted({v for v in values if v})
    code = {v: i + 1 for i, v in enumerate(present)}
    return np.array([code.get(v, 0) if v else 0 for v in values], np.int32), len(present) + 1


def finite_float(text: str) -> float:
    value = float(text)
    if not np.isfinite(value):
        raise ValueError(f"{text!r} is not finite")
    return value


def binary(text: str) -> int:
    value = int(text)
    if value not in (0, 1):
        raise ValueError(f"{text!r} is not 0 or 1")
    return value
