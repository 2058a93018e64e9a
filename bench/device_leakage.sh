#!/usr/bin/env bash
# The probe-bank GPU benchmark, its own device call (bench/device_check.sh is the attention one):
# the bank against a loop over probes at K = 8 and 64 and the LIS table, bench/bench_leakage.py.
# Data: ml-100k when tensorflow-datasets is installed and shared/data holds it; otherwise (a lent
# GPU machine has no tensorflow-datasets) the embedded simulator. Imports from this checkout,
# no install. Results (log + JSON, rewritten after every row) go to $OUT when set, else
# bench/results/device_leakage/. About 6 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
RESULTS="${OUT:-bench/results/device_leakage}"
mkdir -p "$RESULTS"
{ timeout -k 5 30 nvidia-smi || echo "nvidia-smi: not available here"; } > "$RESULTS/nvidia-smi.txt" 2>&1
timeout -k 5 60 "$PYTHON" bench/from_checkout.py -c 'import jax; jax.print_environment_info(); print(jax.devices())' \
    > "$RESULTS/env.txt" 2>&1

data=()
if timeout -k 5 60 "$PYTHON" -c 'import tensorflow_datasets' > /dev/null 2>&1; then
    for dir in shared/data/ml-100k ../shared/data/ml-100k; do
        [ -d "$dir" ] && { data=(--data-dir "$dir"); break; }
    done
else
    echo "tensorflow-datasets is not installed here: the probe bank runs on the simulator"
fi

echo "== probe bank vs loop (K = 8, 64) and the LIS table"
timeout -k 10 360 "$PYTHON" bench/from_checkout.py bench/bench_leakage.py --probes 8,64 "${data[@]}" \
    --out "$RESULTS/leakage.json" 2>&1 | tee "$RESULTS/leakage.log"
status=${PIPESTATUS[0]}
echo "probe bank: exit $status; files in $RESULTS (target: the bank >= 10x the loop at K = 64)"
exit "$status"
