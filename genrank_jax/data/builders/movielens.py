"""MovieLens (GroupLens Research) as a ranking log: `GenrankMovielens`, configs 100k, 1m, 20m, 32m
and latest-small (ml-latest-small, the 2018 development edition: 100,836 ratings, 610 users, 9,742
movies, 1996-03-29 to 2018-09-24, half stars).

Files are read from `manual_dir` (or its `ml-<config>/` subfolder); the format is detected by
which files exist, in this order:
- RecBole atomic files `ml-<config>.inter` (+ `.item`, `.user` when present), tab-separated with
  a `name:type` header;
- GroupLens 100k: `u.data` (tab), `u.item`, `u.user` (`|`, latin-1);
- GroupLens 1m: `ratings.dat`, `movies.dat`, `users.dat` (`::`, latin-1);
- GroupLens 20m / 32m / latest-small: `ratings.csv`, `movies.csv` (no user features).

Exposure = one rating. Actions (a rating is an explicit judgement, so they are read off it):
  like = rating >= 4, love = rating == 5, dislike = rating <= 2   (half stars: 4.5 is a like, not
  a love; 2.5 and 3 are none). The rating itself is kept as the per-exposure extra `rating`.
Item side features (categorical; 0 = missing):
  genre: the first listed genre (genre lists are multi-hot; a categorical table takes one value);
  genre_set: the movie's whole genre set as one value (distinct sorted sets, ranked);
  year_bucket: release year in 5-year buckets from 1920 (1 = before 1925, ..., capped at 2030).
User features (100k, 1m, RecBole with a .user file): age_bucket (the 1m bands <18, 18-24, 25-34,
  35-44, 45-49, 50-55, 56+), gender, occupation.
Requests: the loader groups a user's ratings into sessions (a gap over 30 minutes starts a new
  one), cut every 64 ratings. ml-100k rates many movies within the same second, so sessions are
  long; ties in time are ordered by item id.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import re

import numpy as np
import tensorflow_datasets as tfds

from genrank_jax.data.builders.log_builder import LogBuilder, ParsedLog
from genrank_jax.data.builders.rows import (
    BadRows,
    DataError,
    dense_codes,
    find_file,
    integer,
    non_negative_id,
    rating_scale,
    read_table,
    require_file,
    timestamp_within,
)

log = logging.getLogger(__name__)
WHERE = ("MovieLens comes from GroupLens: https://grouplens.org/datasets/movielens/ "
         "(unzip it and pass the folder as data_dir / manual_dir)")
GENRES_100K = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
               "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
               "War", "Western")
AGE_BANDS = (18, 25, 35, 45, 50, 56)  # the ml-1m age codes; raw ages are put in the same bands
YEAR_BUCKETS = 23  # 0 = unknown, 1..22 = 5-year bands from 1920
NATIVE_FILES = {"100k": ("u.data", "u.item", "u.user"), "1m": ("ratings.dat", "movies.dat", "users.dat"),
                "20m": ("ratings.csv", "movies.csv"), "32m": ("ratings.csv", "movies.csv"),
                "latest-small": ("ratings.csv", "movies.csv")}
NATIVE_FORMATS = {"100k": "grouplens-100k", "1m": "grouplens-1m", "20m": "grouplens-csv", "32m": "grouplens-csv",
                  "latest-small": "grouplens-csv"}
NO_USER_FEATURES = ("20m", "32m", "latest-small")


@dataclasses.dataclass(frozen=True)
class Documented:
    """What each config's README documents: rating scale, collection period (local dates), size."""

    lowest_rating: float
    rating_step: float
    first_day: str
    last_day: str
    num_ratings: int


DOCUMENTED = {
    # "September 19th, 1997 through April 22nd, 1998"
    "100k": Documented(1, 1, "1997-09-19", "1998-04-22", 100_000),
    # users "who joined MovieLens in 2000"; the data was released in February 2003
    "1m": Documented(1, 1, "2000-01-01", "2003-02-28", 1_000_209),
    # "between January 09, 1995 and March 31, 2015" / "... and October 12, 2023"; half stars
    "20m": Documented(0.5, 0.5, "1995-01-09", "2015-03-31", 20_000_263),
    "32m": Documented(0.5, 0.5, "1995-01-09", "2023-10-12", 32_000_204),
    # "between March 29, 1996 and September 24, 2018"; a development edition that GroupLens may
    # regenerate (this is the September 26, 2018 one); half stars
    "latest-small": Documented(0.5, 0.5, "1996-03-29", "2018-09-24", 100_836),
}


def rating_columns(config_name: str) -> tuple:
    """Converters of (user, item, rating, timestamp) enforcing the config's documented ranges."""
    facts, dataset = DOCUMENTED[config_name], f"movielens:{config_name}"
    return (non_negative_id, non_negative_id, rating_scale(facts.lowest_rating, 5, facts.rating_step, dataset),
            timestamp_within(facts.first_day, facts.last_day, dataset))


def rating_actions(ratings: np.ndarray) -> np.ndarray:
    """[E] ratings -> [E, 3] uint8 (like, love, dislike)."""
    return np.stack([ratings >= 4, ratings == 5, ratings <= 2], axis=1).astype(np.uint8)


def year_bucket(years: np.ndarray) -> np.ndarray:
    """0 for unknown (<= 0), else 1 + (year - 1920) // 5 clipped to [1, YEAR_BUCKETS - 1]."""
    bucket = 1 + np.clip((years - 1920) // 5, 0, YEAR_BUCKETS - 2)
    return np.where(years > 0, bucket, 0).astype(np.int32)


def age_bucket(ages: np.ndarray) -> np.ndarray:
    """0 for unknown (<= 0), else 1 + number of AGE_BANDS bounds <= age (1..7)."""
    return np.where(ages > 0, 1 + np.searchsorted(AGE_BANDS, ages, side="right"), 0).astype(np.int32)


def _year_from_title(title: str) -> int:
    found = re.search(r"\((\d{4})\)\s*$", title.strip())
    return int(found.group(1)) if found else 0


def _year_from_text(text: str) -> int:
    found = re.search(r"(\d{4})", text)
    return int(found.group(1)) if found else 0


def _genre_list(text: str, sep: str) -> tuple[str, ...]:
    return tuple(g for g in text.strip().split(sep) if g and g != "(no genres listed)")


def _item_side(item_raw: list[int], years: list[int], genres: list[tuple[str, ...]]):
    first, first_vocab = dense_codes([g[0] if g else "" for g in genres])
    sets, set_vocab = dense_codes(["|".join(sorted(g)) for g in genres])
    side = np.stack([first, sets, year_bucket(np.array(years, np.int64))], axis=1)
    return np.array(item_raw, np.int64).reshape(-1), side.reshape(-1, 3), (first_vocab, set_vocab, YEAR_BUCKETS)


def _user_table(user_raw: list[int], ages: list[int], genders: list[str], occupations: list[str]):
    gender, gender_vocab = dense_codes(genders)
    occupation, occupation_vocab = dense_codes(occupations)
    table = np.stack([age_bucket(np.array(ages, np.int64)), gender, occupation], axis=1)
    return (np.array(user_raw, np.int64).reshape(-1), table.reshape(-1, 3),
            (len(AGE_BANDS) + 2, gender_vocab, occupation_vocab))


def _no_users():
    return np.zeros(0, np.int64), np.zeros((0, 0), np.int32), ()


class GenrankMovielens(LogBuilder):
    """MovieLens ratings as exposures with like / love / dislike actions, one record per user."""

    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name, description=f"MovieLens {name}")
                       for name in DOCUMENTED]
    MANUAL_DOWNLOAD_INSTRUCTIONS = WHERE
    ACTION_NAMES = ("like", "love", "dislike")
    SIDE_FEATURE_NAMES = ("genre", "genre_set", "year_bucket")
    EXTRAS = {"rating": np.float32}
    HOMEPAGE = "https://grouplens.org/datasets/movielens/"
    DEFAULT_REQUEST_GAP_SECONDS = 1800.0
    # Sessions reach hundreds of ratings (ml-100k: p90 ~100, max 737); longer requests would lose
    # candidates to SampleLayout.max_candidates (128), so a session is cut every 64 ratings.
    DEFAULT_MAX_REQUEST_SIZE = 64

    @classmethod
    def user_feature_names(cls, config_name: str) -> tuple[str, ...]:
        return () if config_name in NO_USER_FEATURES else ("age_bucket", "gender", "occupation")

    @staticmethod
    def detect_format(config_name: str, manual_dir: pathlib.Path) -> tuple[str, dict[str, pathlib.Path | None]]:
        """(format, role -> path) of the config's ratings file (RecBole first, then GroupLens).

        MissingFileError if absent; DataError when the folder holds another config's files instead
        (ml-20m's ratings.csv is not movielens:100k, whatever the folder is called).
        """
        subdirs = (f"ml-{config_name}",)
        stem = f"ml-{config_name}"
        if find_file(manual_dir, [f"{stem}.inter"], subdirs=subdirs):
            return "recbole", {
                "ratings": require_file(manual_dir, f"{stem}.inter", subdirs=subdirs, source=WHERE),
                "items": find_file(manual_dir, [f"{stem}.item"], subdirs=subdirs),
                "users": find_file(manual_dir, [f"{stem}.user"], subdirs=subdirs),
            }
        native = NATIVE_FILES[config_name]
        if find_file(manual_dir, [native[0]], subdirs=subdirs):
            paths = [require_file(manual_dir, name, subdirs=subdirs, source=WHERE) for name in native]
            return NATIVE_FORMATS[config_name], dict(zip(("ratings", "items", "users"), paths + [None]))
        for other in DOCUMENTED:
            found = find_file(manual_dir, [f"ml-{other}.inter", NATIVE_FILES[other][0]], subdirs=subdirs)
            if other != config_name and found is not None:
                others = [c for c in DOCUMENTED if NATIVE_FILES[c][0] == found.name or found.name == f"ml-{c}.inter"]
                names = " or ".join(f"movielens:{c}" for c in others)
                raise DataError(f"{found} is the ratings file of {names}, not of movielens:{config_name} (which reads "
                                f"{', '.join(native)} or {stem}.inter)", hint=f"load {names} instead",
                                cli_hint="use " + " or ".join(f"--data movielens:{c}" for c in others))
        # name the config's own ratings file: that is what a user of this config has to fetch
        require_file(manual_dir, native[0], subdirs=subdirs,
                     source=f"expected {', '.join(native)} (GroupLens) or {stem}.inter (RecBole); {WHERE}")
        raise AssertionError("unreachable")

    @classmethod
    def input_files(cls, config_name: str, manual_dir: pathlib.Path) -> list[pathlib.Path]:
        _, paths = cls.detect_format(config_name, pathlib.Path(manual_dir))
        return [p for p in paths.values() if p is not None]

    def _read(self, manual_dir: pathlib.Path, bad: BadRows) -> ParsedLog:
        fmt, paths = self.detect_format(self.builder_config.name, manual_dir)
        reader = {"recbole": self._read_recbole, "grouplens-100k": self._read_100k,
                  "grouplens-1m": self._read_1m, "grouplens-csv": self._read_csv}[fmt]
        config = self.builder_config.name
        ratings, item_table, user_table = reader(paths, bad, rating_columns(config))
        # the size is the dataset's identity: exact duplicate rows (counted, and dropped on request,
        # by the shared builder) do not make a log a larger MovieLens
        from genrank_jax.data.builders.log_builder import duplicate_rows

        columns = [np.asarray(ratings[k]) for k in range(4)]
        self._check_size(config, paths["ratings"], len(ratings[0]) - int(duplicate_rows(columns).sum()))
        num_user_features = len(self.user_feature_names(self.builder_config.name))
        if user_table[1].shape[1] != num_user_features:  # 20m/32m/latest-small keep none; RecBole may lack its .user
            user_table = (np.zeros(0, np.int64), np.zeros((0, num_user_features), np.int32), (1,) * num_user_features)
        user_raw, item_raw, rating, timestamps = (np.array(ratings[k]) for k in range(4))
        return ParsedLog(
            user_raw=user_raw.astype(np.int64), item_raw=item_raw.astype(np.int64),
            timestamps=timestamps.astype(np.float64), actions=rating_actions(rating.astype(np.float32)),
            extras={"rating": rating.astype(np.float32)},
            item_table_raw=item_table[0], item_side=item_table[1], side_vocab_sizes=item_table[2],
            user_table_raw=user_table[0], user_table=user_table[1], user_vocab_sizes=user_table[2],
            file_format=fmt, side_files={role: paths[role] for role in ("items", "users") if paths[role] is not None},
        )

    @staticmethod
    def _check_size(config: str, path: pathlib.Path, num_ratings: int) -> None:
        """DataError when the ratings cannot be this config's: more than it documents, or exactly another's."""
        documented = DOCUMENTED[config].num_ratings
        if num_ratings > documented:  # fewer is fine (a sample, skipped rows); more is another dataset
            raise DataError(f"{path}: {num_ratings:,} ratings, more than the {documented:,} of movielens:{config}: "
                            "the file belongs to a larger MovieLens")
        for other, facts in DOCUMENTED.items():
            if other != config and num_ratings == facts.num_ratings:  # ml-20m's ratings.csv under 32m, say
                raise DataError(f"{path}: exactly {num_ratings:,} ratings, the size of movielens:{other}, not of "
                                f"movielens:{config} ({documented:,})", hint=f"load movielens:{other} instead",
                                cli_hint=f"use --data movielens:{other}")

    # Each reader returns (ratings: [user, item, rating, timestamp] lists, item table, user table).
    @staticmethod
    def _read_recbole(paths, bad, checks):
        columns = dict(zip(("user_id", "item_id", "rating", "timestamp"), checks))
        table = read_table(paths["ratings"], columns, sep="\t", header=True, bad=bad)
        ratings = [table[k] for k in columns]
        items = ([], [], [])
        if paths["items"] is not None:
            t = read_table(paths["items"], {"item_id": non_negative_id, "release_year": str, "class": str}, sep="\t",
                           header=True, bad=bad, encoding="latin-1")
            items = (t["item_id"], [_year_from_text(y) for y in t["release_year"]],
                     [_genre_list(g, " ") for g in t["class"]])
        for role, suffix, what in (("items", "item", "item side features"), ("users", "user", "user features")):
            if paths[role] is None:  # optional in RecBole's format: say so, the features come out all 0
                log.warning("%s has no %s.%s beside it: every %s is 0 (missing)", paths["ratings"],
                            paths["ratings"].stem, suffix, what)
        users = _no_users()
        if paths["users"] is not None:
            t = read_table(paths["users"],
                           {"user_id": non_negative_id, "age": integer, "gender": str, "occupation": str},
                           sep="\t", header=True, bad=bad)
            users = _user_table(t["user_id"], t["age"], t["gender"], t["occupation"])
        return ratings, _item_side(*items), users

    @staticmethod
    def _read_100k(paths, bad, checks):
        table = read_table(paths["ratings"], dict(enumerate(checks)), sep="\t", header=False, bad=bad)
        flags = {5 + i: integer for i in range(len(GENRES_100K))}
        t = read_table(paths["items"], {0: non_negative_id, 2: str, **flags}, sep="|", header=False, bad=bad,
                       encoding="latin-1")
        genres = [tuple(g for i, g in enumerate(GENRES_100K) if t[5 + i][row]) for row in range(len(t[0]))]
        items = _item_side(t[0], [_year_from_text(d) for d in t[2]], genres)
        u = read_table(paths["users"], {0: non_negative_id, 1: integer, 2: str, 3: str}, sep="|", header=False, bad=bad,
                       encoding="latin-1")
        return [table[k] for k in range(4)], items, _user_table(u[0], u[1], u[2], u[3])

    @staticmethod
    def _read_1m(paths, bad, checks):
        table = read_table(paths["ratings"], dict(enumerate(checks)), sep="::", header=False, bad=bad)
        t = read_table(paths["items"], {0: non_negative_id, 1: str, 2: str}, sep="::", header=False, bad=bad,
                       encoding="latin-1")
        items = _item_side(t[0], [_year_from_title(x) for x in t[1]], [_genre_list(g, "|") for g in t[2]])
        u = read_table(paths["users"], {0: non_negative_id, 1: str, 2: integer, 3: str}, sep="::", header=False,
                       bad=bad, encoding="latin-1")
        return [table[k] for k in range(4)], items, _user_table(u[0], u[2], u[1], u[3])

    @staticmethod
    def _read_csv(paths, bad, checks):
        columns = dict(zip(("userId", "movieId", "rating", "timestamp"), checks))
        table = read_table(paths["ratings"], columns, sep=",", header=True, bad=bad)
        t = read_table(paths["items"], {"movieId": non_negative_id, "title": str, "genres": str}, sep=",", header=True,
                       bad=bad)
        items = _item_side(t["movieId"], [_year_from_title(x) for x in t["title"]],
                           [_genre_list(g, "|") for g in t["genres"]])
        return [table[k] for k in columns], items, _no_users()
