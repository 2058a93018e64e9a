"""The job list behind issue 22's and 26's tables, in order of value, for bench/job_queue.py.

    python bench/table_jobs.py --prepared-dir bench/.device_data > jobs.tsv
    python bench/table_jobs.py --dry-run > jobs.tsv        (tiny runs on synthetic:tests, for a CPU check)
    python bench/table_jobs.py --match '^(feed_epochs|phenomenon)' > jobs.tsv   (a subset)

One job = one (data, schedule, model) with 3 seeds (`bench/ablation.py --models M --seeds 3`), so
the queue can run models side by side; pairing by seed happens when the tables are rendered
(bench/feed_tables.py). Order: the streaming table (issue 22) on the `feed` preset and ml-100k,
then the epoch protocol on `feed`, then issue 26's table (ml-100k, ml-latest-small, the default
simulator), then streaming per feed phenomenon (GenRank and DIN), then the two history ablations
on sparse ids (the feed preset with 20,000 items). Every model uses the jnp
attention (`attention_impl=xla`): the two history ablations need it, and the comparison is then
one attention code for all.
"""

from __future__ import annotations

import argparse
import re
import shlex

from ablation import MODELS

SEQUENCE_MODELS = ["genrank", "genrank-nobias", "item-oriented", "din", "genrank-fullhistory", "genrank-historyloss"]
TABLE_MODELS = SEQUENCE_MODELS + ["logistic", "features"]
ISSUE26_MODELS = ["genrank", "genrank-nobias", "item-oriented", "din", "logistic", "features"]
# one phenomenon at the `feed` preset's strength, the others off (drift: the default simulator's)
PHENOMENA = {
    "none": [],
    "dynamics": ["action_dynamics=1.0"],
    "fatigue": ["fatigue=0.3"],
    "repeat": ["repeat_strength=1.0"],
    "newitems": ["new_item_fraction=0.3"],
    "trend": ["trend_strength=1.5"],
}
SPARSE_ITEMS = 20_000  # the feed preset has 500
FEED_OFF = ["action_dynamics=0", "fatigue=0", "repeat_strength=0", "new_item_fraction=0", "trend_strength=0"]


def job(name: str, data: str, model: str, *extra: str, prepared: str | None = None, seeds: int = 3) -> str:
    assert model in MODELS, model
    arguments = ["--data", data, "--models", model, "--seeds", str(seeds), "--out", "{out}",
                 "--set", "attention_impl=xla", *extra]
    if prepared:
        arguments += ["--prepared", prepared]
    return f"{name}\t{shlex.join(arguments)}"


def jobs(prepared_dir: str) -> list[str]:
    ml100k, latest = f"{prepared_dir}/ml-100k.npz", f"{prepared_dir}/ml-latest-small.npz"
    stream = ["--schedule", "stream", "--window", "1d"]
    lines = []
    lines += [job(f"feed_stream_{m}", "synthetic:feed", m, *stream) for m in TABLE_MODELS]
    lines += [job(f"ml-100k_stream_{m}", "movielens:100k", m, *stream, prepared=ml100k) for m in TABLE_MODELS]
    lines += [job(f"feed_epochs_{m}", "synthetic:feed", m) for m in TABLE_MODELS]
    lines += [job(f"ml-100k_epochs_{m}", "movielens:100k", m, prepared=ml100k) for m in TABLE_MODELS]
    lines += [job(f"ml-latest-small_epochs_{m}", "movielens:latest-small", m, prepared=latest) for m in ISSUE26_MODELS]
    lines += [job(f"synthetic_epochs_{m}", "synthetic", m) for m in ISSUE26_MODELS]
    for phenomenon, settings in PHENOMENA.items():
        sim = [f"--sim={s}" for s in FEED_OFF if s.split("=")[0] not in {x.split("=")[0] for x in settings}]
        sim += [f"--sim={s}" for s in settings]
        lines += [job(f"phenomenon-{phenomenon}_stream_{m}", "synthetic:feed", m, *stream, *sim)
                  for m in ("genrank", "din")]
    # the paper's two ablations where its explanation (one pass over sparse ids) would show: the
    # feed preset with 40x the items, so an item is seen about 40x less often
    lines += [job(f"sparse-ids_stream_{m}", "synthetic:feed", m, *stream, f"--sim=num_items={SPARSE_ITEMS}")
              for m in ("genrank", "genrank-historyloss", "genrank-fullhistory")]
    return lines


def dry_run_jobs() -> list[str]:
    """Two models, one seed, both schedules, on the tests feed: the whole path in a minute or two."""
    small = ["--max-epochs", "2", "--max-history", "16", "--max-candidates", "8"]
    return [job("tests_stream_genrank-historyloss", "synthetic:tests", "genrank-historyloss", "--schedule", "stream",
                "--window", "2d", *small, seeds=1),
            job("tests_epochs_features", "synthetic:tests", "features", *small, seeds=1),
            job("tests_stream_din_fatigue", "synthetic:tests", "din", "--schedule", "stream", "--window", "2d",
                "--sim=fatigue=0.3", *small, seeds=1)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prepared-dir", default="bench/.device_data")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--match", default=None, metavar="REGEX",
                        help="only the jobs whose name matches (e.g. the ones a previous call did not reach)")
    args = parser.parse_args(argv)
    lines = dry_run_jobs() if args.dry_run else jobs(args.prepared_dir)
    if args.match:
        lines = [line for line in lines if re.search(args.match, line.split("\t")[0])]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
