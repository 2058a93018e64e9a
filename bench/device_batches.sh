#!/usr/bin/env bash
# Batches built on the GPU (genrank_jax/data/device_samples.py), one device call on a lent H100/H200
# (jax 0.11, Python 3.12, no network, no pip install, no tensorflow-datasets).
#
#   bench/device_batches.sh             on the GPU machine, ~3 minutes
#   bench/device_batches.sh --dry-run   the same steps on the CPU at a tiny size (~1 minute)
#
# The package is imported straight from this checkout (bench/from_checkout.py). The data is the
# benchmark simulator built in memory: 42,000 users, ~10^7 exposures (no TFDS, no files). Steps,
# each under `timeout -k`, each writing as it goes so a step killed at its limit leaves its log:
#   0 env      nvidia-smi, jax's environment info                          env.txt, nvidia-smi.txt
#   1 bench    bench_ingest.py --stage device: the host side alone, the device builder and the numpy
#              builder at batch 64 (the pipeline stage's), 1024 and 8192, beside the H100 figure;
#              the timed device batches (up to 300 a size) compared with numpy's; Trainer.fit with
#              host and device batches at 64 and 1024                      device_batches.json/.log
#   2 tests    tests/test_device_samples.py on the GPU but its CLI test (field equality, same
#              losses; the MovieLens parts skip without tensorflow-datasets) tests.xml/.log
# Results go to $OUT when set (the device tool's folder), else bench/results/device_batches/.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
DRY_RUN=0
case "${1:-}" in
    --dry-run) DRY_RUN=1 ;;
    "") ;;
    *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac
RESULTS="${OUT:-bench/results/device_batches}"
mkdir -p "$RESULTS"
: > "$RESULTS/summary.txt"
run=("$PYTHON" bench/from_checkout.py)
# the host-batch and device-batch trainers jit the same step: the second compile reads the first's
CACHE=$(mktemp -d)
trap 'rm -rf "$CACHE"' EXIT
export JAX_COMPILATION_CACHE_DIR="$CACHE"

. bench/stages.sh  # stage NAME LIMIT COMMAND...: the shared stage runner

if [ "$DRY_RUN" -eq 1 ]; then
    export JAX_PLATFORMS=cpu
    bench=(--sim-users 300 --batches 40 --warmup 8 --batch-sizes 16,64 --fit-batch-sizes 16 --fit-steps 3
           --fit-warmup 2)
    tests=(-k "simulator_batches_match and action")
    limits=(60 240 240)
else
    # 42,000 users x ~240 exposures ~ 10^7; at batch 64, 3,000 timed batches (~1.5 M exposures),
    # larger batches as many exposures in fewer batches
    bench=(--sim-users 42000 --batches 3000 --warmup 200 --batch-sizes 64,1024,8192 --fit-batch-sizes 64,1024
           --fit-steps 50 --fit-warmup 10)
    tests=(-k "not cli")  # the CLI's plumbing is the CPU's to test
    limits=(30 150 60)  # at most 4 minutes with the env probe, ~3 expected
fi

echo "== env"
{ timeout -k 5 30 nvidia-smi || echo "nvidia-smi: not available here"; } > "$RESULTS/nvidia-smi.txt" 2>&1
stage env "${limits[0]}" "${run[@]}" -c 'import jax, sys; jax.print_environment_info(); print(sys.version); print(jax.devices())'
cp "$RESULTS/env.log" "$RESULTS/env.txt"
if [ "$DRY_RUN" -eq 0 ] && ! timeout -k 5 30 "${run[@]}" -c \
        'import jax, sys; sys.exit(0 if jax.devices()[0].platform == "gpu" else 1)'; then
    echo "ERROR: jax sees no GPU here (see $RESULTS/env.txt); use --dry-run on a CPU." >&2
    exit 2
fi

stage bench "${limits[1]}" "${run[@]}" bench/bench_ingest.py --stage device "${bench[@]}" \
    --out "$RESULTS/device_batches.json"
cp "$RESULTS/bench.log" "$RESULTS/device_batches.log"
# pytest writes its JUnit XML at the end: a session timeout 15 s short of the limit ends it in time
session=()
if "$PYTHON" -c 'import pytest_timeout, sys; sys.exit(not hasattr(pytest_timeout, "SESSION_TIMEOUT_KEY"))' \
        > /dev/null 2>&1; then
    session=(--session-timeout "$((limits[2] - 15))")
fi
stage tests "${limits[2]}" "${run[@]}" -m pytest -q -p no:cacheprovider -o addopts="" -rs "${tests[@]}" \
    "${session[@]}" --junitxml "$RESULTS/tests.xml" tests/test_device_samples.py

echo "== summary (files in $RESULTS)"
cat "$RESULTS/summary.txt"
exit "$overall"
