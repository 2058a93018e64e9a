"""Reading raw log files: locating them, parsing delimited rows, and reporting bad ones.

Every error names the file (and, for a bad row, its 1-based line number) because the files
are the user's own downloads: the message has to tell them what to fix or fetch.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import logging
import pathlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from genrank_jax.errors import GenRankError

log = logging.getLogger(__name__)


class DataError(GenRankError, ValueError):
    """A raw file that cannot be read as the requested dataset; the message names the file (and line)."""


class MissingFileError(GenRankError, FileNotFoundError):
    """A raw input file is not in the manual directory."""


class MalformedRowError(DataError):
    """A row of a raw file cannot be used (message: `path:line: reason: row`); skippable."""

    def __init__(self, message: str):
        super().__init__(message, hint="pass skip_bad_rows=True to skip such rows",
                         cli_hint="--skip-bad-rows skips such rows")


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
        message = f"{path}:{line_no}: {reason}: {shown(row)}"
        if not self.skip:
            raise MalformedRowError(message)
        self.counts[path.name] = self.counts.get(path.name, 0) + 1
        if self.counts[path.name] <= 3:  # the first few say what is wrong; the total comes at the end
            log.warning("skipping malformed row %s", message)

    def summarize(self) -> None:
        for name, count in sorted(self.counts.items()):
            log.warning("skipped %d malformed rows of %s", count, name)


def shown(row: object, limit: int = 160) -> str:
    """repr of a row, cut short (a line of a binary file can be kilobytes)."""
    text = repr(row)
    return text if len(text) <= limit else text[:limit] + "..."


SNIFF_BYTES = 1 << 16
DELIMITERS = {"\t": "tab", ",": "comma", "::": "'::'", "|": "'|'", ";": "semicolon", " ": "space"}


def check_text_file(path: pathlib.Path) -> None:
    """DataError if the file's first 64 KiB hold a NUL byte: no text table has one, binary data does."""
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    if b"\x00" in head:
        raise DataError(f"{path}: binary data (a NUL byte at offset {head.index(bytes(1))}), not a delimited "
                        "text file: is it the right file, or a corrupt copy?")


def _decoded(path: pathlib.Path, raw_lines: Iterable[bytes], encoding: str) -> Iterator[str]:
    # decoding line by line (not through a text-mode file) is what lets the error name the line
    for line_no, raw in enumerate(raw_lines, 1):
        try:
            yield raw.decode(encoding)
        except UnicodeDecodeError as error:
            raise DataError(f"{path}:{line_no}: not {encoding} text (byte {raw[error.start]:#04x} at column "
                            f"{error.start + 1}): binary data or the wrong file?") from None


def _split_lines(path: pathlib.Path, sep: str, encoding: str) -> Iterator[tuple[int, list[str]]]:
    check_text_file(path)
    with open(path, "rb") as f:
        lines = _decoded(path, f, encoding)
        if sep == ",":  # CSV may quote fields holding commas (MovieLens titles, KuaiRand tag lists)
            reader = csv.reader(lines)
            try:
                for fields in reader:
                    yield reader.line_num, fields
            except csv.Error as error:
                raise DataError(f"{path}:{reader.line_num}: not readable as CSV ({error})") from None
        else:
            for line_no, line in enumerate(lines, 1):
                yield line_no, line.rstrip("\r\n").split(sep)


def other_delimiter(fields: list[str], sep: str, width: int) -> str | None:
    """The delimiter that would split a row read with `sep` into at least `width` fields, if one does."""
    line = sep.join(fields)
    for candidate in DELIMITERS:
        if candidate != sep and len(line.split(candidate)) >= width:
            return candidate
    return None


def _wrong_delimiter(path: pathlib.Path, line_no: int, fields: list[str], sep: str, width: int) -> DataError | None:
    found = other_delimiter(fields, sep, width) if len(fields) == 1 else None
    if found is None:
        return None
    return DataError(f"{path}:{line_no}: the fields are {DELIMITERS[found]}-separated, but {path.name} must be "
                     f"{DELIMITERS.get(sep, repr(sep))}-separated: {shown(fields)}")


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
            _, header_fields = next(lines)
        except StopIteration:
            raise DataError(f"{path}: empty file, expected a header row") from None
        names = [name.strip().split(":")[0] for name in header_fields]
        for key in columns:
            if key not in names:
                if names and names[0].startswith("\ufeff"):
                    raise DataError(f"{path}:1: the file starts with a UTF-8 byte-order mark (BOM), so its first "
                                    f"column reads {names[0]!r}, not {names[0][1:]!r}: save it as UTF-8 without a BOM")
                raise (_wrong_delimiter(path, 1, header_fields, sep, len(columns))
                       or DataError(f"{path}:1: header has no column {key!r}: {shown(names)}"))
            index[key] = names.index(key)
    else:
        index = {key: int(key) for key in columns}
    width = max(index.values()) + 1
    converters = [(out[key], columns[key], i) for key, i in index.items()]
    skipped_before = bad.counts.get(path.name, 0)
    first_row = True
    for line_no, fields in lines:
        if not fields or fields == [""]:
            continue
        if len(fields) < width:
            wrong = _wrong_delimiter(path, line_no, fields, sep, width)
            if wrong is not None and first_row:  # the whole file is, most likely: not a row to skip
                raise wrong
            bad.report(path, line_no, f"expected at least {width} fields, got {len(fields)}", fields)
            first_row = False
            continue
        first_row = False
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
    first_key = next(iter(columns))
    if not chunks[first_key] and not out[first_key]:
        skipped = bad.counts.get(path.name, 0) - skipped_before
        raise DataError(f"{path}: no data rows" + (" after the header" if header else "") +
                        (f" ({skipped:,} malformed rows skipped)" if skipped else ""))
    return {key: np.concatenate([*chunks[key], np.asarray(out[key])]) if chunks[key] else np.asarray(out[key])
            for key in columns}


def dense_codes(values: Sequence[str]) -> tuple[np.ndarray, int]:
    """Categorical codes: 0 for missing ("" or None), else 1 + rank among the sorted distinct values.

    Returns (codes [N] int32, vocabulary size including the missing code).
    """
    present = sorted({v for v in values if v})
    code = {v: i + 1 for i, v in enumerate(present)}
    return np.array([code.get(v, 0) if v else 0 for v in values], np.int32), len(present) + 1


def integer(text: str) -> int:
    """int(text), without Python's digit grouping: `1_977` is a malformed value, not 1977."""
    if "_" in text:
        raise ValueError(f"{text.strip()!r} is not an integer")
    return int(text)


def finite_float(text: str) -> float:
    if "_" in text:  # float() groups digits too: "880_000_000"
        raise ValueError(f"{text.strip()!r} is not a number")
    value = float(text)
    if not np.isfinite(value):
        raise ValueError(f"{text!r} is not finite")
    if abs(value) > np.finfo(np.float32).max:
        raise ValueError(f"{text.strip()!r} is outside float32's range (|x| <= {np.finfo(np.float32).max:.3g})")
    return value


def binary(text: str) -> int:
    value = integer(text)
    if value not in (0, 1):
        raise ValueError(f"{text!r} is not 0 or 1")
    return value


def non_negative_id(text: str) -> int:
    value = integer(text)
    if value < 0:
        raise ValueError(f"id {value} is negative")
    return value


def rating_scale(low: float, high: float, step: float, dataset: str) -> Callable[[str], float]:
    """Converter of a rating that must lie on `dataset`'s scale low..high in steps of `step`."""
    def rating(text: str) -> float:
        value = finite_float(text)
        steps = (value - low) / step
        if not (low <= value <= high and steps == round(steps)):
            raise ValueError(f"rating {text.strip()} is outside {dataset}'s scale {low:g}..{high:g} "
                             f"(steps of {step:g})")
        return value
    return rating


def utc_date(seconds: float) -> str:
    try:
        return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return "not a representable date"


def timestamp_within(first_day: str, last_day: str, dataset: str, *, unit: float = 1.0) -> Callable[[str], float]:
    """Converter of a timestamp (seconds times `unit`) inside `dataset`'s documented period.

    The documented days are local dates; a day of slack on each side keeps time zones out of it.
    """
    day = 86400.0
    start = datetime.datetime.fromisoformat(first_day).replace(tzinfo=datetime.timezone.utc).timestamp() - day
    end = datetime.datetime.fromisoformat(last_day).replace(tzinfo=datetime.timezone.utc).timestamp() + 2 * day
    digits = len(str(int(start / unit)))

    def timestamp(text: str) -> float:
        value = finite_float(text)
        seconds = value * unit
        if not start <= seconds < end:
            shorter = len(text.strip().lstrip("-").split(".")[0]) < digits
            raise ValueError(f"timestamp {text.strip()} ({utc_date(seconds)}) is outside {dataset}'s documented "
                             f"period {first_day} .. {last_day}" + (": a truncated value?" if shorter else ""))
        return value
    return timestamp
