#!/usr/bin/env bash
# GPU check of the Pallas attention backends on a lent H100/H200 (jax 0.11, Python 3.12, no internet).
# Runs the device parity tests, then the attention benchmark; whole script < 8 minutes.
# Results (test log + benchmark JSON) go to "$OUT" when set, else bench/results/.
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
timeout 270 "$PYTHON" -m pytest -m device tests/kernels -x -q -p no:cacheprovider \
    2>&1 | tee "$RESULTS/device_tests.log"
tests_status=${PIPESTATUS[0]}

echo "== benchmark (bf16, ALiBi + time bias, jagged lengths in [S/2, S], 128 candidates)"
stamp="$(date +%Y%m%d_%H%M%S)"
timeout 240 "$PYTHON" bench/bench_attention.py --seq-lens 1024,4096,8192,16384 --head-dims 64,128 \
    --repeats 5 --time-budget 200 --out "$RESULTS/bench_attention_${stamp}.json" \
    2>&1 | tee "$RESULTS/bench_attention_${stamp}.log"
bench_status=${PIPESTATUS[0]}

echo "== summary: tests exit ${tests_status}, benchmark exit ${bench_status}; files in ${RESULTS}"
echo "   targets (H100, S=8192, D=128): fwd >= 400 TFLOP/s, fwd+bwd >= 250 TFLOP/s, >= 1.5x cuDNN"
[ "$tests_status" -eq 0 ] && [ "$bench_status" -eq 0 ]
