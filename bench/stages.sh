# Sourced by the one-call GPU scripts (device_check.sh, device_batches.sh): each step runs as a
# stage under `timeout -k`, its output in $RESULTS/NAME.log and its exit status in
# $RESULTS/summary.txt, so a stage killed at its limit still leaves what it wrote. A failed stage
# sets `overall=1`; the caller exits with it.
overall=0

stage() {  # stage NAME LIMIT_SECONDS COMMAND... : output to NAME.log, exit status to summary.txt
    local name=$1 limit=$2 start=$SECONDS status
    shift 2
    echo "== $name (limit ${limit} s)"
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$RESULTS/$name.log"
    status=${PIPESTATUS[0]}
    [ "$status" -eq 124 ] || [ "$status" -eq 137 ] && echo "   $name stopped at its ${limit} s limit"
    echo "$name: exit $status after $((SECONDS - start)) s" | tee -a "$RESULTS/summary.txt"
    [ "$status" -eq 0 ] || overall=1
}
