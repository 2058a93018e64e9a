"""Fault injection into the loaders: malformed raw files give a clear error naming the file and line.

Copies of the real ml-100k files (the first ratings only, to stay fast) are corrupted by
hypothesis: a rating off the 1..5 scale, a time outside 1997-09-19 .. 1998-04-22 (a truncated
timestamp among them), a negative id, random bytes, the wrong delimiter, duplicated rows. Each
must raise a `DataError` (never TFDS's AssertionError or a bare UnicodeDecodeError) whose message
names the file, the line and the cause; the CLI prints it as one line with exit code 2.
The shared data is never modified: every case writes its own folder.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genrank_jax import cli
from genrank_jax.data import sources
from genrank_jax.data.builders.rows import DataError, MalformedRowError
from genrank_jax.errors import GenRankError
from tests.data import fixtures

NUM_RATINGS = 120  # data rows copied from ml-100k.inter (its line 1 is the header)
FAST = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
PERIOD = (874_627_200, 893_376_000)  # 1997-09-19 .. 1998-04-23 00:00 UTC, ml-100k's documented period


@pytest.fixture(scope="module")
def ml100k(shared_data_module):
    """(header, data lines, item text, user text) of a small ml-100k copy."""
    folder = shared_data_module / "ml-100k"
    header, *rows = (folder / "ml-100k.inter").read_text().splitlines()[:NUM_RATINGS + 1]
    return header, rows, (folder / "ml-100k.item").read_bytes(), (folder / "ml-100k.user").read_bytes()


@pytest.fixture(scope="module")
def shared_data_module():
    from tests.conftest import require_shared_data

    return require_shared_data()


def write_copy(folder, ml100k, rows=None, inter_bytes=None):
    header, original, item, user = ml100k
    raw = folder / "raw"
    raw.mkdir(parents=True)
    (raw / "ml-100k.item").write_bytes(item)
    (raw / "ml-100k.user").write_bytes(user)
    text = "\n".join([header, *(original if rows is None else rows)]) + "\n"
    (raw / "ml-100k.inter").write_bytes(text.encode() if inter_bytes is None else inter_bytes)
    return raw


def load(raw, **options):
    return sources.load_dataset("movielens:100k", data_dir=raw, tfds_dir=raw.parent / "tfds", **options)


def cli_error(raw, capsys, *extra, keep_out=False, command="train"):
    """The one line `genrank-jax <command>` prints for this folder (asserting exit code 2 and one line)."""
    options = {"train": ["--steps", "1", "--preset", "tiny"], "lis": ["--sequential", "--seeds", "1"]}[command]
    code = cli.main([command, "--data", "movielens:100k", "--data-dir", str(raw), "--out", str(raw.parent / "run"),
                     "--no-progress", *options, *extra])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(f"genrank-jax {command}: "), err
    assert "skip_bad_rows=True" not in err and "Traceback" not in err
    return (err, captured.out) if keep_out else err


def truncated(timestamp: str):
    return st.integers(1, len(timestamp) - 1).map(lambda keep: timestamp[:keep])


@st.composite
def bad_rating_rows(draw):
    """(line index among the data rows, the corrupted row, words the error must contain)."""
    index = draw(st.integers(0, NUM_RATINGS - 1))
    field = draw(st.sampled_from(["rating", "timestamp", "user", "item", "text"]))
    user, item, rating, timestamp = ["196", "242", "3", "881250949"]
    if field == "rating":
        value = draw(st.one_of(st.integers(6, 10**6), st.integers(-10**6, 0), st.sampled_from([2.5, 4.2, 42])))
        rating, words = str(value), ["rating", str(value), "scale 1..5"]
    elif field == "timestamp":
        value = draw(st.one_of(truncated(timestamp), st.integers(0, PERIOD[0] - 1).map(str),
                               st.integers(PERIOD[1] + 2 * 86400, 10**12).map(str)))
        timestamp, words = value, ["timestamp", value, "documented period 1997-09-19 .. 1998-04-22"]
    elif field in ("user", "item"):
        value = str(draw(st.integers(-10**6, -1)))
        user, item = (value, item) if field == "user" else (user, value)
        words = [f"id {value} is negative"]
    else:
        rating = draw(st.sampled_from(["five", "", "3 stars", "nan", "inf"]))
        words = ["bad value"]
    return index, "\t".join([user, item, rating, timestamp]), words


@FAST
@given(case=bad_rating_rows())
def test_bad_row_names_file_line_and_cause(case, ml100k, tmp_path_factory, capsys):
    index, row, words = case
    rows = list(ml100k[1])
    rows[index] = row
    raw = write_copy(tmp_path_factory.mktemp("bad"), ml100k, rows)
    where = f"ml-100k.inter:{index + 2}:"  # 1-based, after the header
    with pytest.raises(MalformedRowError) as error:
        load(raw)
    message = str(error.value)
    assert where in message and all(word in message for word in words), message
    assert "skip_bad_rows=True" in message  # the library names its keyword ...
    line = cli_error(raw, capsys)
    assert where in line and all(word in line for word in words) and "--skip-bad-rows" in line  # ... the CLI its flag
    skipped = load(raw, skip_bad_rows=True)
    assert skipped.info["bad_rows"] == {"ml-100k.inter": 1}
    assert skipped.interactions.num_exposures == NUM_RATINGS - 1


def test_truncated_timestamp_of_the_issue(ml100k, tmp_path, capsys):
    rows = list(ml100k[1])
    rows[3] = "587\t310\t3\t8928"
    raw = write_copy(tmp_path, ml100k, rows)
    expected = ("ml-100k.inter:5: bad value (timestamp 8928 (1970-01-01 02:28:48 UTC) is outside movielens:100k's "
                "documented period 1997-09-19 .. 1998-04-22: a truncated value?): ['587', '310', '3', '8928']")
    with pytest.raises(MalformedRowError) as error:
        load(raw)
    assert expected + " (pass skip_bad_rows=True to skip such rows)" in str(error.value)
    for command in ("train", "lis"):
        assert cli_error(raw, capsys, command=command).endswith(expected + " (--skip-bad-rows skips such rows)")


@FAST
@given(copies=st.lists(st.integers(0, NUM_RATINGS - 1), min_size=1, max_size=20))
def test_duplicate_rows_are_counted_then_kept_or_dropped(copies, ml100k, tmp_path_factory):
    rows = list(ml100k[1]) + [ml100k[1][i] for i in copies]
    raw = write_copy(tmp_path_factory.mktemp("dup"), ml100k, rows)
    kept = load(raw)
    assert kept.info["duplicate_rows"] == len(copies) and not kept.info["drop_duplicates"]
    assert kept.interactions.num_exposures == NUM_RATINGS + len(copies)
    dropped = load(raw, drop_duplicates=True)
    assert dropped.info["duplicate_rows"] == len(copies) and dropped.info["drop_duplicates"]
    assert dropped.interactions.num_exposures == NUM_RATINGS
    clean = load(write_copy(tmp_path_factory.mktemp("clean"), ml100k))
    for name in ("user_ids", "item_ids", "timestamps", "actions"):
        np.testing.assert_array_equal(getattr(dropped.interactions, name), getattr(clean.interactions, name))


def test_every_row_twice_is_reported_by_the_cli(ml100k, tmp_path, capsys, monkeypatch):
    raw = write_copy(tmp_path, ml100k, [row for row in ml100k[1] for _ in range(2)])
    from genrank_jax.model.config import GenRankConfig

    def stop(*args, **kwargs):
        raise GenRankError("stopped after loading")

    monkeypatch.setattr(GenRankConfig, "preset", stop)  # the report is under test, not training
    for flags, fate in (([], "kept (--drop-duplicates drops them)"), (["--drop-duplicates"], "dropped")):
        err, out = cli_error(raw, capsys, *flags, keep_out=True)
        assert "stopped after loading" in err
        assert f"{NUM_RATINGS:,} exact duplicate rows in the raw log: {fate}" in out


def test_header_only_file(ml100k, tmp_path, capsys):
    raw = write_copy(tmp_path, ml100k, rows=[])
    with pytest.raises(DataError, match=r"ml-100k\.inter: no data rows after the header"):
        load(raw)
    for command in ("train", "lis"):
        assert "ml-100k.inter: no data rows after the header" in cli_error(raw, capsys, command=command)


def test_all_rows_skipped_is_an_error(ml100k, tmp_path):
    raw = write_copy(tmp_path, ml100k, rows=["1\t2\tfive\t881250949", "3\t4\t5\t12"])
    with pytest.raises(DataError, match=r"ml-100k\.inter: no data rows after the header \(2 malformed rows skipped\)"):
        load(raw, skip_bad_rows=True)


@FAST
@given(blob=st.binary(min_size=1, max_size=4096))
def test_random_bytes_name_the_file(blob, ml100k, tmp_path_factory, capsys):
    raw = write_copy(tmp_path_factory.mktemp("bytes"), ml100k, inter_bytes=blob)
    with pytest.raises(DataError) as error:  # never UnicodeDecodeError, csv.Error or TFDS's AssertionError
        load(raw)
    assert "ml-100k.inter" in str(error.value)
    assert "ml-100k.inter" in cli_error(raw, capsys)


def test_binary_and_undecodable_files_say_so(ml100k, tmp_path):
    raw = write_copy(tmp_path / "nul", ml100k, inter_bytes=np.random.default_rng(23).bytes(2048) + bytes(1))
    with pytest.raises(DataError, match=r"ml-100k\.inter: binary data \(a NUL byte at offset \d+\)"):
        load(raw)
    header = ml100k[0].encode()
    raw = write_copy(tmp_path / "latin", ml100k,
                     inter_bytes=header + b"\n196\t242\t3\t881250949\n1\t\xe9\t3\t881250949\n")
    with pytest.raises(DataError, match=r"ml-100k\.inter:3: not utf-8 text \(byte 0xe9 at column 3\)"):
        load(raw)


@FAST
@given(sep=st.sampled_from([",", ";", "|", " "]))
def test_wrong_delimiter_is_named(sep, ml100k, tmp_path_factory, capsys):
    header, rows, *_ = ml100k
    text = "\n".join(line.replace("\t", sep) for line in [header, *rows]) + "\n"
    raw = write_copy(tmp_path_factory.mktemp("sep"), ml100k, inter_bytes=text.encode())
    name = {",": "comma", ";": "semicolon", "|": "'|'", " ": "space"}[sep]
    with pytest.raises(DataError, match=rf"ml-100k\.inter:1: the fields are {name}-separated, but ml-100k\.inter "
                                        "must be tab-separated"):
        load(raw)
    assert f"{name}-separated" in cli_error(raw, capsys)


def test_headerless_file_with_the_wrong_delimiter(tmp_path):
    fixtures.write_grouplens_100k(tmp_path / "raw", fixtures.movielens_log(seed=4))
    data = tmp_path / "raw" / "u.data"
    data.write_text(data.read_text().replace("\t", ","))
    with pytest.raises(DataError,
                       match=r"u\.data:1: the fields are comma-separated, but u\.data must be tab-separated"):
        load(tmp_path / "raw")


def test_another_configs_file_is_refused(tmp_path, capsys):
    fixtures.write_grouplens_csv(tmp_path / "raw", fixtures.movielens_log(seed=5))  # ml-20m's ratings.csv
    names = "movielens:20m or movielens:32m or movielens:latest-small"
    with pytest.raises(DataError, match=rf"ratings\.csv is the ratings file of {names}, "
                                        r"not of movielens:100k \(which reads u\.data, u\.item, u\.user or "
                                        rf"ml-100k\.inter\) \(load {names} instead\)"):
        load(tmp_path / "raw")
    assert ("(use --data movielens:20m or --data movielens:32m or --data movielens:latest-small)"
            in cli_error(tmp_path / "raw", capsys))


def test_more_ratings_than_the_config_is_refused(shared_data_module, ml100k, tmp_path):
    rows = (shared_data_module / "ml-100k" / "ml-100k.inter").read_text().splitlines()[1:]
    # a distinct extra rating (one second later): an exact duplicate does not count (issue 21)
    user, item, rating, seconds = rows[0].split("\t")
    extra = "\t".join([user, item, rating, str(int(float(seconds)) + 1)])
    raw = write_copy(tmp_path, ml100k, rows + [extra])
    with pytest.raises(DataError, match=r"ml-100k\.inter: 100,001 ratings, more than the 100,000 of movielens:100k"):
        load(raw)


def test_kuairand_period_and_ids(tmp_path):
    truth = fixtures.kuairand_log(seed=6)
    fixtures.write_kuairand(tmp_path / "raw", truth)
    path = max((tmp_path / "raw").glob("log_*_pure.csv"), key=lambda p: len(p.read_text().splitlines()))
    lines = path.read_text().splitlines()
    assert len(lines) >= 3
    fields = lines[1].split(",")
    fields[4] = fields[4][:9]  # time_ms cut short
    lines[1] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(MalformedRowError, match=rf"{path.name}:2: .*timestamp \d{{9}} .*outside "
                                                r"kuairand:pure's documented period 2022-04-08 \.\. 2022-05-08: a "
                                                r"truncated value\?"):
        sources.load_dataset("kuairand:pure", data_dir=tmp_path / "raw", tfds_dir=tmp_path / "tfds")
    fields[4], fields[0] = lines[2].split(",")[4], "-12"
    lines[1] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(MalformedRowError, match=rf"{path.name}:2: bad value \(id -12 is negative"):
        sources.load_dataset("kuairand:pure", data_dir=tmp_path / "raw", tfds_dir=tmp_path / "tfds")


def test_explicit_cutoff_outside_the_log_names_its_range(tmp_path):
    log = fixtures.movielens_log(seed=7)
    fixtures.write_grouplens_100k(tmp_path / "raw", log)
    first, last = log.times.min(), log.times.max()
    from genrank_jax.data.builders.rows import utc_date

    for cutoff in (2.0, float(first), float(last) + 1):
        with pytest.raises(ValueError, match=rf"cutoff .* is outside the log, which runs from {utc_date(first)} "
                                             rf"to {utc_date(last)}"):
            load(tmp_path / "raw", cutoff=cutoff)
    assert load(tmp_path / "raw", cutoff=float(last)).eval_requests.size > 0  # the last time itself is accepted


def test_exactly_another_configs_size_is_refused(monkeypatch, tmp_path, capsys):
    """ml-20m's ratings.csv under movielens:32m: same format, times inside 32m's period; its size gives it away.

    (Documented sizes are shrunk so a small file stands in for 20 million rows.)
    """
    import dataclasses

    from genrank_jax.data.builders import movielens

    log = fixtures.movielens_log(seed=8)
    fixtures.write_grouplens_csv(tmp_path / "raw", log)
    shrunk = {"20m": len(log.users), "32m": len(log.users) + 5}
    monkeypatch.setattr(movielens, "DOCUMENTED", {name: dataclasses.replace(facts, num_ratings=shrunk.get(
        name, facts.num_ratings)) for name, facts in movielens.DOCUMENTED.items()})
    with pytest.raises(DataError, match=rf"ratings\.csv: exactly {len(log.users)} ratings, the size of movielens:20m, "
                                        rf"not of movielens:32m \({len(log.users) + 5}\) "
                                        r"\(load movielens:20m instead\)"):
        sources.load_dataset("movielens:32m", data_dir=tmp_path / "raw", tfds_dir=tmp_path / "tfds")
    assert sources.load_dataset("movielens:20m", data_dir=tmp_path / "raw",
                                tfds_dir=tmp_path / "tfds").interactions.num_exposures == len(log.users)


def test_a_utf8_byte_order_mark_is_named(ml100k, tmp_path):
    header, rows, _, _ = ml100k
    text = "\ufeff" + "\n".join([header, *rows]) + "\n"
    raw = write_copy(tmp_path, ml100k, inter_bytes=text.encode("utf-8"))
    with pytest.raises(DataError, match="byte-order mark"):
        load(raw)


def test_duplicated_rows_do_not_make_a_larger_movielens(shared_data_module, tmp_path):
    """All of ml-100k's 100,000 ratings and 300 exact copies: counted (and dropped on request) as
    duplicates, not refused as another dataset before --drop-duplicates could act (issue 21)."""
    folder = shared_data_module / "ml-100k"
    header, *rows = (folder / "ml-100k.inter").read_text().splitlines()
    full = (header, rows, (folder / "ml-100k.item").read_bytes(), (folder / "ml-100k.user").read_bytes())
    raw = write_copy(tmp_path, full, rows + rows[:300])
    dropped = load(raw, drop_duplicates=True)
    assert dropped.info["duplicate_rows"] == 300 and dropped.interactions.num_exposures == len(rows)


def test_lis_features_that_are_not_numbers_or_out_of_float32_range(tmp_path, capsys):
    import numpy as np

    (tmp_path / "text.npy").write_text("0.1 0.2 0.3\n")
    np.save(tmp_path / "words.npy", np.array(["a", "b"]))
    np.save(tmp_path / "huge.npy", np.full((400, 2), 1e39))
    for name, message in (("text", "--features text: "), ("words", "holds dtype <U1, not numbers"),
                          ("huge", "outside float32's range")):
        code = cli.main(["lis", "--data", "synthetic:tests", "--seeds", "1", "--leaks", "next_item", "--horizon", "7d",
                         "--features", f"{name}={tmp_path / (name + '.npy')}", "--no-progress",
                         "--out", str(tmp_path / f"out-{name}")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and "\n" not in err, err


def test_a_corrupt_prepared_cache_names_its_folder_and_the_fix(ml100k, tmp_path, capsys):
    """Bytes damaged inside a prepared shard (Riegeli's 'block header hash mismatch'): one error
    naming the cache folder and saying to delete it, on the TFDS path every real dataset takes."""
    raw = write_copy(tmp_path, ml100k)
    load(raw)
    (shard,) = (tmp_path / "tfds").rglob("*.array_record-*")
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = np.random.default_rng(21).integers(0, 256, 64, dtype=np.uint8).tobytes()
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"the prepared data in {shard.parent} is unreadable \(RuntimeError: "
                                        r"Corrupted Riegeli.*\): delete that folder and run again"):
        load(raw)
