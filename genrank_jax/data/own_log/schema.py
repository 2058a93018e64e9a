"""The schema file of a user's own log (`--schema schema.toml`): which column is what.

Read with `tomllib`; every key is checked (a key that does not exist, a missing one, a wrong
type or a column named for two roles is a `SchemaError` naming the file and the key). Relative
paths in the file are relative to the schema file's folder. docs/guides/own-log.md ("Your own log")
documents every key; `LogSchema.describe()` is what the preparation cache is keyed on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import tomllib
from collections.abc import Mapping
from typing import Any

from genrank_jax.errors import GenRankError

TIME_UNITS = ("s", "ms", "us", "iso")
DEFAULT_OOV_BUCKETS = 1024
DEFAULT_REQUEST_GAP_SECONDS = 1800.0


class SchemaError(GenRankError, ValueError):
    """A schema file that cannot describe the log: the message names the file and the key."""


@dataclasses.dataclass(frozen=True)
class SideTable:
    """A separate file of per-id attributes (items or users), keyed by the raw id in column `key`."""

    path: pathlib.Path
    key: str


@dataclasses.dataclass(frozen=True)
class ContentSource:
    """Frozen content embeddings: a list<float> `column` of the item table, or an
    `npy` matrix [I, C] whose row r belongs to the raw item id on line r of `ids` (.txt or .npy)."""

    column: str | None = None
    npy: pathlib.Path | None = None
    ids: pathlib.Path | None = None


@dataclasses.dataclass(frozen=True)
class LogSchema:
    """What each column of the log means (see the module docstring and docs/guides/own-log.md)."""

    path: pathlib.Path | None
    user: str
    item: str
    time: str
    time_unit: str
    actions: Mapping[str, str]  # action name -> 0/1 column, in the file's order
    request: str | None = None
    item_features: Mapping[str, str] = dataclasses.field(default_factory=dict)  # name -> column
    item_table: SideTable | None = None
    user_features: Mapping[str, str] = dataclasses.field(default_factory=dict)
    user_table: SideTable | None = None
    content: ContentSource | None = None
    min_count: int = 1
    oov_buckets: int = DEFAULT_OOV_BUCKETS
    request_gap_seconds: float = DEFAULT_REQUEST_GAP_SECONDS
    max_request_size: int | None = None
    delimiter: str | None = None  # CSV/TSV only; None: by the file's extension

    @property
    def action_names(self) -> tuple[str, ...]:
        return tuple(self.actions)

    @property
    def log_item_features(self) -> dict[str, str]:
        """Item features read from the log's own columns (none when an item table is given)."""
        return {} if self.item_table else dict(self.item_features)

    @property
    def log_user_features(self) -> dict[str, str]:
        return {} if self.user_table else dict(self.user_features)

    def log_columns(self) -> dict[str, str]:
        """Role -> column of every log column the schema reads (what the reader checks and loads)."""
        roles = {"columns.user": self.user, "columns.item": self.item, "columns.time": self.time}
        if self.request:
            roles["columns.request"] = self.request
        roles.update({f"actions.{name}": column for name, column in self.actions.items()})
        roles.update({f"item_features.{name}": c for name, c in self.log_item_features.items()})
        roles.update({f"user_features.{name}": c for name, c in self.log_user_features.items()})
        return roles

    def describe(self) -> dict[str, Any]:
        """JSON-able form of every setting (paths as strings): the cache key and the saved record."""
        def plain(value):
            if isinstance(value, pathlib.Path):
                return str(value)
            if dataclasses.is_dataclass(value):
                return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
            if isinstance(value, Mapping):
                return {k: plain(v) for k, v in value.items()}
            return value
        return {k: v for k, v in plain(self).items() if k != "path"}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=False).encode()).hexdigest()[:16]


# Allowed keys of each table: (key, type, required). A key outside these is a SchemaError.
_COLUMNS = {"user": str, "item": str, "time": str, "time_unit": str, "request": str}
_TABLES = ("columns", "actions", "item_features", "item_table", "user_features", "user_table", "content", "options")
_SIDE_TABLE = {"path": str, "item": str, "user": str}
_CONTENT = {"column": str, "npy": str, "ids": str}
_OPTIONS = {"min_count": int, "oov_buckets": int, "request_gap_seconds": (int, float),
            "max_request_size": int, "delimiter": str}


def load_schema(path: str | os.PathLike) -> LogSchema:
    """Read and check a schema file (see the module docstring)."""
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise SchemaError(f"schema file {path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except tomllib.TOMLDecodeError as error:
        raise SchemaError(f"{path}: not valid TOML ({error})") from None
    except UnicodeDecodeError:
        raise SchemaError(f"{path}: not UTF-8 text (is it the schema file?)") from None
    return schema_from_dict(raw, path)


def schema_from_dict(raw: Mapping[str, Any], path: pathlib.Path | None = None) -> LogSchema:
    """A LogSchema from the parsed TOML (a dict of tables); `path` anchors relative paths."""
    where = str(path) if path else "schema"
    folder = path.parent if path else pathlib.Path.cwd()

    def fail(message: str):
        raise SchemaError(f"{where}: {message}")

    def table(name: str, allowed: Mapping[str, Any] | None) -> dict:
        value = raw.get(name, {})
        if not isinstance(value, Mapping):
            fail(f"[{name}] must be a table, got {type(value).__name__}")
        for key, item in value.items():
            if allowed is not None and key not in allowed:
                fail(f"unknown key {name}.{key}; [{name}] takes {', '.join(allowed)}")
            expected = allowed[key] if allowed is not None else str
            if not isinstance(item, expected) or isinstance(item, bool):
                kind = expected.__name__ if isinstance(expected, type) else "number"
                fail(f"{name}.{key} must be a {'string (a column name)' if expected is str else kind}, "
                     f"got {item!r}")
            if expected is str and not item.strip():
                fail(f"{name}.{key} is empty")
        return dict(value)

    unknown = [name for name in raw if name not in _TABLES]
    if unknown:
        fail(f"unknown table or key {unknown[0]!r}; a schema has the tables {', '.join(_TABLES)}")
    columns = table("columns", _COLUMNS)
    for key in ("user", "item", "time"):
        if key not in columns:
            fail(f"columns.{key} is missing: name the log's {key} column")
    unit = columns.get("time_unit")
    if unit is None:
        fail(f"columns.time_unit is missing: one of {', '.join(TIME_UNITS)}")
    if unit not in TIME_UNITS:
        fail(f"columns.time_unit must be one of {', '.join(TIME_UNITS)}, got {unit!r}")
    actions = table("actions", None)
    if not actions:
        fail("[actions] is empty: name at least one 0/1 action column (e.g. click = \"clicked\")")
    options = table("options", _OPTIONS)
    min_count = options.get("min_count", 1)
    oov = options.get("oov_buckets", DEFAULT_OOV_BUCKETS)
    gap = float(options.get("request_gap_seconds", DEFAULT_REQUEST_GAP_SECONDS))
    max_size = options.get("max_request_size", 0)
    if min_count < 1:
        fail(f"options.min_count must be >= 1, got {min_count}")
    if oov < 1:
        fail(f"options.oov_buckets must be >= 1 (ids first seen after the cutoff hash into them), got {oov}")
    if gap < 0:
        fail(f"options.request_gap_seconds must be >= 0, got {gap:g}")
    if max_size < 0:
        fail(f"options.max_request_size must be >= 0 (0: no cap), got {max_size}")
    delimiter = options.get("delimiter")
    if delimiter is not None and len(delimiter) != 1:
        fail(f"options.delimiter must be one character, got {delimiter!r}")

    def side_table(name: str, id_key: str) -> SideTable | None:
        value = table(name, _SIDE_TABLE)
        if not value:
            return None
        wrong = [k for k in value if k not in ("path", id_key)]
        if wrong:
            fail(f"unknown key {name}.{wrong[0]}; [{name}] takes path, {id_key}")
        for key in ("path", id_key):
            if key not in value:
                fail(f"{name}.{key} is missing")
        return SideTable(path=(folder / value["path"]).expanduser(), key=value[id_key])

    item_table, user_table = side_table("item_table", "item"), side_table("user_table", "user")
    item_features, user_features = table("item_features", None), table("user_features", None)
    content_raw = table("content", _CONTENT)
    content = None
    if content_raw:
        if "column" in content_raw and ("npy" in content_raw or "ids" in content_raw):
            fail("[content] takes either column, or npy with ids, not both")
        if "column" not in content_raw and not ("npy" in content_raw and "ids" in content_raw):
            fail("[content] needs column = \"...\" (a list<float> column), or npy = \"...\" with ids = \"...\"")
        if "column" in content_raw and item_table is None:
            fail("content.column names a column of the item table: add [item_table] (or use npy + ids)")
        content = ContentSource(column=content_raw.get("column"),
                                npy=folder / content_raw["npy"] if "npy" in content_raw else None,
                                ids=folder / content_raw["ids"] if "ids" in content_raw else None)
    schema = LogSchema(
        path=path, user=columns["user"], item=columns["item"], time=columns["time"], time_unit=unit,
        request=columns.get("request"), actions=actions, item_features=item_features, item_table=item_table,
        user_features=user_features, user_table=user_table, content=content, min_count=min_count,
        oov_buckets=oov, request_gap_seconds=gap, max_request_size=max_size or None, delimiter=delimiter)
    seen: dict[str, str] = {}
    for role, column in schema.log_columns().items():
        if column in seen:
            fail(f"column {column!r} is named twice: as {seen[column]} and as {role}")
        seen[column] = role
    if set(item_features) & set(user_features):
        fail(f"feature name {sorted(set(item_features) & set(user_features))[0]!r} is both an item and a user feature")
    return schema
