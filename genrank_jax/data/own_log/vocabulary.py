"""Raw ids of any type -> dense ids, built from the train split only; later ids hash into OOV buckets.

Every raw id first becomes an int64 *key*: an integer id is its own key; a string that is a
canonical decimal integer ("123", not "0123" or "1_000") is that integer, so a CSV's "123" and a
Parquet 123 are one id; any other string is the first 8 bytes of its BLAKE2b digest (stable
across processes and machines; two distinct strings collide with probability ~n^2 / 2^65).

`IdVocabulary` (users or items): the keys with at least `min_count` train exposures get dense ids
[0, V) in sorted key order; every other key, seen later or never, gets `V + splitmix64(key) %
oov_buckets`: a new item shares a bucket with a few other new items, never with a trained one.
`FeatureVocabulary` (a categorical side feature): code 0 is missing/unknown, the sorted values
1..V. `Vocabulary` holds them all; it is saved beside every checkpoint and in every export
(`vocabulary.npz`), so training, evaluation, LIS and serving map a raw id the same way:
`Vocabulary.load(path).items.lookup(["a17", 99])`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pathlib
import re
from collections.abc import Iterable, Mapping

import numpy as np

MISSING_KEY = np.iinfo(np.int64).min  # a null side-feature value (never a real key: see string_keys)
_CANONICAL_INT = re.compile(r"-?(0|[1-9][0-9]{0,17})")  # up to 18 digits: always fits int64
FORMAT = "genrank-jax vocabulary 1"
FILE_NAME = "vocabulary.npz"  # its name beside a run's checkpoints and in an export


def string_key(text: str) -> int:
    """The int64 key of one raw string id (see the module docstring)."""
    if _CANONICAL_INT.fullmatch(text):
        return int(text)
    key = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True)
    return key if key != MISSING_KEY else key + 1


def string_keys(values: Iterable[str]) -> np.ndarray:
    return np.fromiter((string_key(v) for v in values), np.int64)


def keys_of(raw_ids) -> np.ndarray:
    """[N] int64 keys of raw ids given as Python/numpy ints or strings (mixed is fine)."""
    values = np.asarray(raw_ids)
    if values.dtype.kind in "iu":
        if values.dtype == np.uint64 and values.size and values.max() > np.iinfo(np.int64).max:
            raise ValueError("raw ids above 2^63 - 1 cannot be keys; give them as strings")
        return values.astype(np.int64).reshape(-1)
    flat = values.reshape(-1).tolist()
    out = np.empty(len(flat), np.int64)
    for i, value in enumerate(flat):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, str, bytes)):
            raise ValueError(f"raw id {value!r} is neither an integer nor a string")
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        out[i] = string_key(value) if isinstance(value, str) else int(value)
    return out


def splitmix64(keys: np.ndarray) -> np.ndarray:
    """[N] uint64 well-mixed hash of int64 keys (the OOV bucket of a key is this mod oov_buckets)."""
    x = keys.astype(np.int64).view(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@dataclasses.dataclass(frozen=True)
class IdVocabulary:
    """Dense ids of users or items: keys [V] int64 sorted (dense id = index), then OOV buckets."""

    keys: np.ndarray
    oov_buckets: int

    @property
    def size(self) -> int:
        """Embedding rows needed: the known ids plus the buckets."""
        return len(self.keys) + self.oov_buckets

    @property
    def num_known(self) -> int:
        return len(self.keys)

    def dense(self, keys: np.ndarray) -> np.ndarray:
        """[N] int32 dense ids of int64 keys (OOV bucket for keys not in the vocabulary)."""
        keys = np.asarray(keys, np.int64)
        at = np.searchsorted(self.keys, keys)
        found = at < len(self.keys)
        found[found] = self.keys[at[found]] == keys[found]
        buckets = len(self.keys) + (splitmix64(keys) % np.uint64(self.oov_buckets)).astype(np.int64)
        return np.where(found, at, buckets).astype(np.int32)

    def lookup(self, raw_ids) -> np.ndarray:
        """Dense ids of raw ids (ints or strings, as in the log)."""
        return self.dense(keys_of(raw_ids)).reshape(np.shape(raw_ids))

    def is_known(self, keys: np.ndarray) -> np.ndarray:
        return self.dense(keys) < len(self.keys)

    @classmethod
    def from_counts(cls, keys: np.ndarray, min_count: int, oov_buckets: int) -> "IdVocabulary":
        """The vocabulary of the keys occurring at least min_count times in `keys` (train rows)."""
        unique, counts = np.unique(np.asarray(keys, np.int64), return_counts=True)
        return cls(keys=unique[counts >= min_count], oov_buckets=oov_buckets)


@dataclasses.dataclass(frozen=True)
class FeatureVocabulary:
    """Codes of one categorical feature: 0 = missing or unknown, values [V] int64 sorted -> 1..V."""

    keys: np.ndarray

    @property
    def size(self) -> int:
        return len(self.keys) + 1

    def codes(self, keys: np.ndarray) -> np.ndarray:
        keys = np.asarray(keys, np.int64)
        at = np.searchsorted(self.keys, keys)
        found = at < len(self.keys)
        found[found] = self.keys[at[found]] == keys[found]
        return np.where(found, at + 1, 0).astype(np.int32)

    def lookup(self, raw_values) -> np.ndarray:
        return self.codes(keys_of(raw_values)).reshape(np.shape(raw_values))

    @classmethod
    def of(cls, keys: np.ndarray) -> "FeatureVocabulary":
        keys = np.unique(np.asarray(keys, np.int64))
        return cls(keys=keys[keys != MISSING_KEY])


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Every mapping of a prepared log: users, items and categorical features (see module doc)."""

    users: IdVocabulary
    items: IdVocabulary
    item_features: Mapping[str, FeatureVocabulary] = dataclasses.field(default_factory=dict)
    user_features: Mapping[str, FeatureVocabulary] = dataclasses.field(default_factory=dict)
    min_count: int = 1
    info: Mapping[str, object] = dataclasses.field(default_factory=dict)  # cutoff, source, schema digest

    def to_bytes(self) -> bytes:
        arrays = {"users": self.users.keys, "items": self.items.keys}
        arrays.update({f"item_feature/{n}": v.keys for n, v in self.item_features.items()})
        arrays.update({f"user_feature/{n}": v.keys for n, v in self.user_features.items()})
        meta = dict(format=FORMAT, oov_buckets={"users": self.users.oov_buckets, "items": self.items.oov_buckets},
                    min_count=self.min_count, item_features=list(self.item_features),
                    user_features=list(self.user_features), info=dict(self.info))
        arrays["meta"] = np.frombuffer(json.dumps(meta, default=str).encode(), np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    def digest(self) -> str:
        """SHA-256 of the saved form: checkpoints and exports record it to detect a swapped file."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def save(self, path: str | os.PathLike) -> pathlib.Path:
        """Write atomically (temporary file + rename): a crash never leaves half a vocabulary."""
        path = pathlib.Path(path)
        temporary = path.with_name(path.name + ".partial")
        temporary.write_bytes(self.to_bytes())
        os.replace(temporary, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocabulary":
        from genrank_jax.errors import GenRankError

        path = pathlib.Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            meta = json.loads(arrays.pop("meta").tobytes().decode())
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
            oov = meta["oov_buckets"]
            return cls(users=IdVocabulary(arrays["users"], oov["users"]),
                       items=IdVocabulary(arrays["items"], oov["items"]),
                       item_features={n: FeatureVocabulary(arrays[f"item_feature/{n}"]) for n in meta["item_features"]},
                       user_features={n: FeatureVocabulary(arrays[f"user_feature/{n}"]) for n in meta["user_features"]},
                       min_count=meta["min_count"], info=meta.get("info", {}))
        except (OSError, ValueError, KeyError) as error:
            raise GenRankError(f"{path} is not a readable genrank-jax vocabulary "
                               f"({type(error).__name__}: {error})") from None
