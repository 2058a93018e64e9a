#!/usr/bin/env bash
# GPU check on a lent H100/H200 (jax 0.11, Python 3.12, no internet): the Pallas attention
# backends' device parity tests, the attention benchmark, then the LIS probe bank against a loop
# over probes (the >= 10x at K = 64 target; on ml-100k when shared/data has it, else the simulator).
# Whole script < 10 minutes (the per-call limit). Results (logs + JSON) go to "$OUT" when set,
# else bench/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
RESULTS="${OUT:-bench/results}"
mkdir -p "$RESULTS"

echo "== devices"
if ! "$PYTHON" -c 'import jax; print(jax.__version__, jax.devices())'; then
    echo "ERROR: jax does not import; this script expects jax[cuda] preinstalled." >&2
    exit 2
fi
if ! "$PYTHON" -c 'import jax, sys; sys.exit(0 if jax.devices()[0].platform == "gpu" else 1)'; then
    echo "ERROR: no GPU visible to jax (default device is not 'gpu'); nothing to check here." >&2
    exit 2
fi

# The package only, never its dependencies (no internet on the device machine).
if ! "$PYTHON" -c 'import genrank_jax.kernels' 2>/dev/null; then
    "$PYTHON" -m pip install --no-deps -q -e . || { echo "ERROR: pip install --no-deps -e . failed" >&2; exit 2; }
fi

echo "== device parity tests (pallas_triton, pallas_mosaic_gpu)"
timeout 240 "$PYTHON" -m pytest -m device tests/kernels -x -q -p no:cacheprovider \
    2>&1 | tee "$RESULTS/device_tests.log"
tests_status=${PIPESTATUS[0]}

echo "== benchmark (bf16, ALiBi + time bias, jagged lengths in [S/2, S], 128 candidates)"
stamp="$(date +%Y%m%d_%H%M%S)"
timeout 200 "$PYTHON" bench/bench_attention.py --seq-lens 1024,4096,8192,16384 --head-dims 64,128 \
    --repeats 5 --time-budget 170 --out "$RESULTS/bench_attention_${stamp}.json" \
    2>&1 | tee "$RESULTS/bench_attention_${stamp}.log"
bench_status=${PIPESTATUS[0]}

echo "== probe bank vs loop (K = 8, 64) and the LIS table"
data=()
for dir in shared/data/ml-100k ../shared/data/ml-100k; do
    [ -d "$dir" ] && { data=(--data-dir "$dir"); break; }
done
timeout 140 "$PYTHON" bench/bench_leakage.py --probes 8,64 "${data[@]}" --out "$RESULTS/leakage_gpu_${stamp}.json" \
    2>&1 | tee "$RESULTS/leakage_gpu_${stamp}.log"
leakage_status=${PIPESTATUS[0]}

echo "== summary: tests exit ${tests_status}, attention benchmark exit ${bench_status}," \
     "probe bank exit ${leakage_status}; files in ${RESULTS}"
echo "   targets (H100, S=8192, D=128): fwd >= 400 TFLOP/s, fwd+bwd >= 250 TFLOP/s, >= 1.5x cuDNN;"
echo "   probe bank >= 10x the loop at K = 64"
[ "$tests_status" -eq 0 ] && [ "$bench_status" -eq 0 ] && [ "$leakage_status" -eq 0 ]
