#!/usr/bin/env bash
# Issue 22's and 26's tables in one call on a lent GPU machine (jax 0.11, Python 3.12, 16 cores,
# no network, no pip install, no tensorflow-datasets).
#
#   bench/device_tables.sh              on the GPU machine, DEADLINE_S (default 540) seconds
#   bench/device_tables.sh --dry-run    three tiny jobs on the CPU (about a minute), same files
#   JOBS_MATCH='^(feed_epochs|phenomenon)' bench/device_tables.sh   only the jobs whose names match
#
# Measured on an H200 (2026-12-04, 14 jobs at once): 20 of the 56 jobs in 505 s (both streaming
# tables, ml-100k's epochs but two); a feed epochs job needs ~130 s a seed and a per-phenomenon
# stream ~170 s a seed at that concurrency, so the remaining jobs take two more calls, e.g.
#   JOBS_MATCH='^(feed_epochs|ml-100k_epochs_(din|genrank-historyloss|logistic|features))'
#   JOBS_MATCH='^(phenomenon|ml-latest-small|synthetic_)'
#
# The MovieLens datasets travel prepared (bench/prepared_data.py; no TFDS there): before the call,
#   python bench/prepared_data.py --data movielens:100k --data-dir ../shared/data/ml-100k \
#       --out bench/.device_data/ml-100k.npz       (and movielens:latest-small the same way)
# and carry bench/.device_data. The job list is bench/table_jobs.py (in order of value); the queue
# (bench/job_queue.py) runs PARALLEL of them at once, many small models sharing the GPU, starts
# none in the last 45 s and stops what still runs at the deadline. Results: $OUT/results.tar.gz
# (every job's JSON, table and log, repacked every 20 s), plus env.txt, nvidia-smi.txt, jobs.tsv.
# Render them here with bench/feed_tables.py.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
RESULTS="${OUT:-bench/results/device_tables}"
mkdir -p "$RESULTS"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# seeds of one job compile the same shapes: the second and third read the first's
export JAX_COMPILATION_CACHE_DIR="$WORK/cache"
case "${1:-}" in
    --dry-run) export JAX_PLATFORMS=cpu; jobs_args=(--dry-run); parallel=2; deadline=300 ;;
    "") jobs_args=(--prepared-dir "$PWD/bench/.device_data" ${JOBS_MATCH:+--match "$JOBS_MATCH"})
        parallel="${PARALLEL:-14}"; deadline="${DEADLINE_S:-540}" ;;
    *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac
{ timeout -k 5 30 nvidia-smi || echo "nvidia-smi: not available here"; } > "$RESULTS/nvidia-smi.txt" 2>&1
timeout -k 5 60 "$PYTHON" bench/from_checkout.py -c \
    'import jax, sys, numpy; print(sys.version); print("jax", jax.__version__, "numpy", numpy.__version__); print(jax.devices())' \
    > "$RESULTS/env.txt" 2>&1
cat "$RESULTS/env.txt"
"$PYTHON" bench/from_checkout.py bench/table_jobs.py "${jobs_args[@]}" > "$RESULTS/jobs.tsv" || exit 1
"$PYTHON" bench/job_queue.py "$RESULTS/jobs.tsv" --out "$WORK/runs" --archive "$RESULTS/results.tar.gz" \
    --parallel "$parallel" --deadline-s "$deadline" --python "$PYTHON"
