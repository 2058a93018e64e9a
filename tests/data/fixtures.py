"""Small raw files in the real datasets' formats, written from one known log.

`movielens_log` / `kuairand_log` draw a log whose sessions are known (gaps inside a session are
at most 10 minutes, often zero; gaps between sessions are hours), then `write_*` functions put
the same log in each on-disk format, so every format must load to the same dataset.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

GENRES = ("Action", "Adventure", "Animation", "Children's", "Comedy", "Drama", "Sci-Fi")
GENRES_100K = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
               "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
               "War", "Western")


@dataclasses.dataclass
class RawLog:
    """Rows in file order (not sorted). users/items: raw ids; session: global session number."""

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray  # MovieLens: 1..5; KuaiRand: unused
    times: np.ndarray  # integer seconds (MovieLens) or milliseconds (KuaiRand)
    session: np.ndarray
    item_ids: np.ndarray  # the catalog's raw ids
    item_years: np.ndarray
    item_genres: list[tuple[str, ...]]
    user_ids: np.ndarray
    user_ages: np.ndarray
    user_genders: list[str]
    user_occupations: list[str]


def movielens_log(seed: int = 0) -> RawLog:
    rng = np.random.default_rng(seed)
    user_ids = np.array([3, 7, 10, 21, 40, 55])
    item_ids = np.array([2, 5, 9, 11, 30, 31, 44, 60, 61, 99])
    users, items, times, session = [], [], [], []
    number = 0
    for user in user_ids:
        t = 880_000_000 + int(rng.integers(0, 10_000_000))
        for _ in range(rng.integers(2, 5)):
            size = int(rng.integers(1, 6))
            chosen = rng.choice(item_ids, size, replace=False)
            for item in chosen:
                users.append(user)
                items.append(item)
                times.append(t)
                session.append(number)
                t += int(rng.choice([0, 0, 5, 600]))  # ties, short and 10-minute gaps stay in a session
            t += int(rng.integers(2, 50)) * 3600
            number += 1
    order = rng.permutation(len(users))  # files are not sorted
    pick = lambda xs: np.asarray(xs)[order]
    genres = [tuple(sorted(rng.choice(GENRES, rng.integers(1, 4), replace=False), key=GENRES.index))
              for _ in item_ids]
    return RawLog(users=pick(users), items=pick(items), ratings=rng.integers(1, 6, len(users))[order],
                  times=pick(times), session=pick(session), item_ids=item_ids,
                  item_years=rng.integers(1930, 2000, len(item_ids)), item_genres=genres, user_ids=user_ids,
                  user_ages=rng.integers(15, 70, len(user_ids)),
                  user_genders=[str(g) for g in rng.choice(["M", "F"], len(user_ids))],
                  user_occupations=[str(o) for o in rng.choice(["artist", "doctor", "student"], len(user_ids))])


def _write(path: pathlib.Path, lines: list[str], encoding: str = "utf-8") -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding=encoding)
    return path


def write_grouplens_100k(folder: pathlib.Path, log: RawLog) -> None:
    _write(folder / "u.data",
           [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in zip(log.users, log.items, log.ratings, log.times)])
    rows = []
    for item, year, genres in zip(log.item_ids, log.item_years, log.item_genres):
        flags = "|".join("1" if g in genres else "0" for g in GENRES_100K)
        rows.append(f"{item}|Movie {item} ({year})|01-Jan-{year}||http://x|{flags}")
    _write(folder / "u.item", rows, "latin-1")
    _write(folder / "u.user", [f"{u}|{a}|{g}|{o}|00000" for u, a, g, o in
                               zip(log.user_ids, log.user_ages, log.user_genders, log.user_occupations)])


def _age_code(age: int) -> int:
    return [1, 18, 25, 35, 45, 50, 56][int(np.searchsorted([18, 25, 35, 45, 50, 56], age, side="right"))]


# The log's times fall in ml-100k's period (1997-98); ml-1m's files hold 2000-03 times, so they are
# written this much later (the loaders reject times outside the config's documented period).
TIME_SHIFT = {"grouplens-1m": 100_000_000}


def write_grouplens_1m(folder: pathlib.Path, log: RawLog) -> None:
    times = log.times + TIME_SHIFT["grouplens-1m"]
    _write(folder / "ratings.dat",
           [f"{u}::{i}::{r}::{t}" for u, i, r, t in zip(log.users, log.items, log.ratings, times)])
    _write(folder / "movies.dat", [f"{i}::Movie {i}, The ({y})::{'|'.join(g)}"
                                   for i, y, g in zip(log.item_ids, log.item_years, log.item_genres)], "latin-1")
    _write(folder / "users.dat", [f"{u}::{g}::{_age_code(a)}::{o}::00000" for u, a, g, o in
                                  zip(log.user_ids, log.user_ages, log.user_genders, log.user_occupations)])


def write_grouplens_csv(folder: pathlib.Path, log: RawLog) -> None:
    _write(folder / "ratings.csv", ["userId,movieId,rating,timestamp"] +
           [f"{u},{i},{r:.1f},{t}" for u, i, r, t in zip(log.users, log.items, log.ratings, log.times)])
    _write(folder / "movies.csv", ["movieId,title,genres"] +
           [f'{i},"Movie {i}, The ({y})",{"|".join(g)}'
            for i, y, g in zip(log.item_ids, log.item_years, log.item_genres)])


def write_recbole(folder: pathlib.Path, log: RawLog, stem: str = "ml-100k") -> None:
    _write(folder / f"{stem}.inter", ["user_id:token\titem_id:token\trating:float\ttimestamp:float"] +
           [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in zip(log.users, log.items, log.ratings, log.times)])
    _write(folder / f"{stem}.item", ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"] +
           [f"{i}\tMovie {i}\t{y}\t{' '.join(g)}" for i, y, g in zip(log.item_ids, log.item_years, log.item_genres)])
    _write(folder / f"{stem}.user", ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"] +
           [f"{u}\t{a}\t{g}\t{o}\t00000" for u, a, g, o in
            zip(log.user_ids, log.user_ages, log.user_genders, log.user_occupations)])


MOVIELENS_WRITERS = {  # format -> (config, writer)
    "grouplens-100k": ("100k", write_grouplens_100k),
    "grouplens-1m": ("1m", write_grouplens_1m),
    "grouplens-csv": ("20m", write_grouplens_csv),
    "recbole": ("100k", write_recbole),
}

KUAIRAND_LOG_COLUMNS = ("user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,"
                        "is_hate,long_view,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,"
                        "is_profile_enter,is_rand,tab")
KUAIRAND_ACTIONS = ("is_click", "is_like", "is_follow", "is_comment", "is_forward", "is_hate", "long_view")
KUAIRAND_LOGS = ("log_standard_4_08_to_4_21", "log_standard_4_22_to_5_08", "log_random_4_22_to_5_08")


@dataclasses.dataclass
class KuaiLog:
    rows: list[dict]  # one dict per log row, in file order, with "file" naming its log
    video_ids: np.ndarray
    tags: list[str]
    durations: list[str]  # "" for missing
    user_ids: np.ndarray


def kuairand_log(seed: int = 0) -> KuaiLog:
    rng = np.random.default_rng(seed)
    user_ids = np.array([12, 5, 300, 41])
    video_ids = np.array([1001, 17, 250, 3, 88, 4000])
    rows, number = [], 0
    for user in user_ids:
        t = 1_649_376_000_000 + int(rng.integers(0, 10**9))
        for _ in range(rng.integers(2, 4)):
            for _ in range(rng.integers(1, 6)):
                flags = {name: int(rng.random() < 0.4) for name in KUAIRAND_ACTIONS}
                is_rand = int(rng.random() < 0.3)
                rows.append(dict(user_id=int(user), video_id=int(rng.choice(video_ids)), time_ms=t, session=number,
                                 is_rand=is_rand, tab=int(rng.integers(0, 5)), play_time_ms=int(rng.integers(0, 60000)),
                                 duration_ms=int(rng.integers(1000, 90000)), file=KUAIRAND_LOGS[2 if is_rand else
                                                                                              int(rng.integers(0, 2))],
                                 **flags))
                t += int(rng.integers(1, 40_000))  # under the 60 s request gap
            t += int(rng.integers(1, 10)) * 3_600_000
            number += 1
    tags = ['"28,11"', "7", "", '"3,9,12"', "7", "28"]
    return KuaiLog(rows=rows, video_ids=video_ids, tags=tags, durations=["15000", "", "3000", "120000", "800", "61000"],
                   user_ids=user_ids)


def write_kuairand(folder: pathlib.Path, log: KuaiLog, suffix: str = "pure") -> None:
    for stem in KUAIRAND_LOGS:
        lines = [KUAIRAND_LOG_COLUMNS]
        for r in log.rows:
            if r["file"] == stem:
                actions = ",".join(str(r[name]) for name in KUAIRAND_ACTIONS)
                lines.append(f"{r['user_id']},{r['video_id']},20220408,1200,{r['time_ms']},{actions},"
                             f"{r['play_time_ms']},{r['duration_ms']},0,0,0,{r['is_rand']},{r['tab']}")
        _write(folder / f"{stem}_{suffix}.csv", lines)
    _write(folder / f"video_features_basic_{suffix}.csv",
           ["video_id,author_id,video_type,upload_dt,upload_type,visible_status,video_duration,server_width,"
            "server_height,music_id,music_type,tag"] +
           [f"{v},9,{'AD' if k % 3 == 0 else 'NORMAL'},2022-04-01,ShortImport,public,{d},720,1280,0,{k % 2},{tag}"
            for k, (v, d, tag) in enumerate(zip(log.video_ids, log.durations, log.tags))])
    user_columns = ("user_id,user_active_degree,is_lowactive_period,is_live_streamer,is_video_author,follow_user_num,"
                    "follow_user_num_range,fans_user_num,fans_user_num_range,friend_user_num,friend_user_num_range,"
                    "register_days,register_days_range")
    _write(folder / f"user_features_{suffix}.csv", [user_columns] +
           [f"{u},{'high_active' if k % 2 else 'full_active'},0,0,{k % 2},3,1-10,0,0,1,1-5,100,61-90"
            for k, u in enumerate(log.user_ids)])
