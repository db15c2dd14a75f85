# Sourced by the benchmark shell scripts (gpu.sh, scale_realistic.sh): run one stage under its own time limit,
# so that one failure does not cost the others.
#   stage NAME SECONDS COMMAND...   output in $OUT_DIR/NAME.log; prints rc, wall time and the log's last
#                                   $STAGE_TAIL lines (default 4)
stage() {
    local name=$1 limit=$2 t0
    shift 2
    t0=$(date +%s%N)
    timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
    local rc=$?
    echo "== $name: rc $rc, $(( ($(date +%s%N) - t0) / 1000000 )) ms"
    tail -n "${STAGE_TAIL:-4}" "$OUT_DIR/$name.log" | cut -c1-1500
}
