#!/usr/bin/env bash
# The one-call GPU check (a lent H100/H200: jax 0.11, Python 3.12, no network, no pip install).
#
#   bench/device_check.sh              on the GPU machine, ~7 minutes
#   bench/device_check.sh --dry-run    every stage on the CPU (interpret mode, tiny sizes), same files
#
# The package is imported straight from this checkout (bench/from_checkout.py maps kernels/ and
# leakage/ into genrank_jax without pip). Stages run in order of value, each under `timeout -k`,
# each writing its JSON as rows arrive, so a stage killed at its limit still leaves its results:
#   0 env       nvidia-smi, jax's environment info                         env.txt, nvidia-smi.txt
#   1 smoke     one jitted fwd+bwd call per backend and kind, max errors   smoke.json     (60 s)
#   1b self_check  what impl=None checks and chooses, each check's time     self_check.json (60 s)
#   2 headline  attention benchmark S=8192 D=128 bf16: TFLOP/s fwd and fwd+bwd of each backend,
#               cuDNN with a materialised bias, the XLA reference           attention_headline.json
#   3 parity    device parity tests, one pytest per backend, no -x, per-test timeout, JUnit XML
#               (kernel tests + GenRank on the backend: f32 on Triton, bf16 on Mosaic GPU)
#                                                                           parity_<impl>.xml/.log
#   4 sweep     the rest of the benchmark sweep                            attention_sweep.json
# Results go to $OUT when set (the device tool's folder), else bench/results/device_check/.
# The probe-bank benchmark is a separate call: bench/device_leakage.sh.
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
RESULTS="${OUT:-bench/results/device_check}"
mkdir -p "$RESULTS"
: > "$RESULTS/summary.txt"
run=("$PYTHON" bench/from_checkout.py)

. bench/stages.sh  # stage NAME LIMIT COMMAND...: the shared stage runner

if [ "$DRY_RUN" -eq 1 ]; then
    export JAX_PLATFORMS=cpu
    smoke_args=(--dry-run)
    tiny=(--tokens 64 --model-width 64 --repeats 1 --interpret)
    headline=(--seq-lens 32 --head-dims 32 --kinds softmax --impls pallas_mosaic_gpu,pallas_triton,dpa,xla
              "${tiny[@]}")
    sweep=(--seq-lens 16,32 --head-dims 32 --exclude 32x32 --kinds silu --impls pallas_triton,xla
           "${tiny[@]}")
    # One interpret-mode twin of the device tests per backend; the device tests themselves are
    # collected and skip (no GPU), which checks their selection and parametrisation.
    parity_marks="device or not slow"
    parity_keyword="(TestInterpret and test_alibi_without_time) or on_device"
    per_test=300
    limits=(120 300 300 300 300)  # catch a hang only: a loaded CI machine is slow
else
    smoke_args=()
    headline=(--seq-lens 8192 --head-dims 128 --kinds softmax --impls pallas_mosaic_gpu,pallas_triton,dpa,xla
              --repeats 5)
    sweep=(--seq-lens 1024,4096,8192,16384 --head-dims 64,128 --exclude 8192x128 --kinds softmax,silu
           --impls pallas_mosaic_gpu,pallas_triton,dpa --repeats 3 --time-budget 60)
    parity_marks="device"
    parity_keyword=""
    per_test=45
    limits=(30 60 100 100 45)  # ~8 minutes with the env probe and the self-check
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

stage smoke "${limits[1]}" "${run[@]}" bench/device_smoke.py "${smoke_args[@]}" --out "$RESULTS/smoke.json"
# what impl=None checks and chooses here (kernels/self_check.py), and how long each check takes
stage self_check "${limits[1]}" "${run[@]}" bench/backend_self_check.py --out "$RESULTS/self_check.json"
stage headline "${limits[2]}" "${run[@]}" bench/bench_attention.py "${headline[@]}" \
    --out "$RESULTS/attention_headline.json"
# pytest writes its JUnit XML at the end of the session: a session timeout (checked between tests)
# 20 s short of the stage limit ends it in time to write the file.
session=()
if "$PYTHON" -c 'import pytest_timeout, sys; sys.exit(not hasattr(pytest_timeout, "SESSION_TIMEOUT_KEY"))' \
        > /dev/null 2>&1; then
    session=(--session-timeout "$((limits[3] - 20))")
fi
for impl in pallas_triton pallas_mosaic_gpu; do
    stage "parity_$impl" "${limits[3]}" "${run[@]}" -m pytest -q -p no:cacheprovider -o addopts="" \
        -m "$parity_marks" -k "$impl${parity_keyword:+ and ($parity_keyword)}" \
        --timeout "$per_test" "${session[@]}" --junitxml "$RESULTS/parity_$impl.xml" \
        tests/kernels/test_pallas_gpu.py tests/kernels/test_model_backends.py
done
stage sweep "${limits[4]}" "${run[@]}" bench/bench_attention.py "${sweep[@]}" \
    --out "$RESULTS/attention_sweep.json"

echo "== summary (files in $RESULTS)"
cat "$RESULTS/summary.txt"
echo "targets (H100, S=8192, D=128): fwd >= 400 TFLOP/s, fwd+bwd >= 250 TFLOP/s, >= 1.5x cuDNN"
exit "$overall"
