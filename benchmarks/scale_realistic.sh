#!/usr/bin/env bash
# Does more simulation help on real micrographs? The realistic preset built with MAX_SCENES scenes, U-Nets
# trained (realistic.yaml) on the train split of its first 64, 128, ... scenes for the same 18 epochs (steps
# grow with the scenes), and the first 64 scenes trained as many steps as the largest set (same lr schedule,
# stretched), each scored on the 16 real fields (benchmarks/bench_real.py). Meant for a GPU machine
# (generation on CuPy, training on CUDA: 9 minutes with 256 scenes on an H200); on 2 CPU cores the 256-scene set
# alone takes about 17 minutes to build (64 scenes: 251 s).
#
#   benchmarks/scale_realistic.sh RESULTS_DIR [MAX_SCENES=256] [WORKERS=8] [REAL_DIR=the bundled temsynth/data/real/hrtem_generalization]
#
# Everything it builds goes to a scratch folder, removed at the end; logs and real_*.json to RESULTS_DIR.
set -u
PY=${PYTHON:-python3}
OUT_DIR=$(mkdir -p "${1:-scale_results}" && cd "${1:-scale_results}" && pwd)
MAX=${2:-256}
WORKERS=${3:-8}
REPO=$(cd "$(dirname "$0")/.." && pwd)
if [ $(( MAX % 64 )) -ne 0 ] || [ "$MAX" -lt 128 ]; then
    echo "scale_realistic.sh: MAX_SCENES must be a multiple of 64, at least 128 (got $MAX)" >&2; exit 2
fi
REAL=$(cd "${4:-$REPO/temsynth/data/real/hrtem_generalization}" && pwd) || exit 2
WORK=$(mktemp -d "${TMPDIR:-/tmp}/temsynth-scale.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$WORK" || exit 3  # training/examples/realistic.yaml reads ./tem_np_realistic and ./real_exp, writes ./runs

. "$REPO/benchmarks/stage.sh"
STAGE_TAIL=2

train() {  # train NAME SCENES EPOCHS LR_DECAY
    stage "train_$1" "${TRAIN_LIMIT:-240}" $PY -m training.train --config "$REPO/training/examples/realistic.yaml" --quiet \
        --set output_dir="runs/$1" --set "data.query=structure_index < $2" --set epochs="$3" \
        --set optimizer.lr_decay_per_epoch="$4" --set num_workers=4
    stage "real_$1" 120 $PY "$REPO/benchmarks/bench_real.py" "runs/$1/model" --real "$REAL" --out "$OUT_DIR/real_$1.json"
    $PY - "$OUT_DIR/real_$1.json" "$1" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"   {sys.argv[2]}: pooled {d['pooled_dice']:.4f}", {k: round(v, 3) for k, v in d["dice_by_class"].items()},
      f"bare-carbon FP {d['bare_carbon_false_positive_fraction']:.4f}")
EOF
}

stage import 60 $PY "$REPO/dataset_scripts/import_experimental.py" "$REAL" --pixel-sizes "$REAL/index.csv" \
    --target-pixel-size-A 0.7 --tile-px 144 --finetune-fraction 0.5 --seed 0 \
    --stratify-by material,nominal_diameter_nm --out real_exp
stage generate 420 $PY -m temsynth.cli generate --preset realistic --structures "$MAX" --out tem_np_realistic \
    --workers "$WORKERS" --quiet
train s64_e18 64 18 0.85
train "s${MAX}_e18" "$MAX" 18 0.85
# The 64 scenes for as many steps as the largest set: epochs x MAX/64, the per-epoch decay stretched to match.
k=$(( MAX / 64 ))
train "s64_e$(( 18 * k ))" 64 $(( 18 * k )) "$($PY -c "print(round(0.85 ** (1 / $k), 5))")"
[ "$MAX" -gt 128 ] && train s128_e18 128 18 0.85
exit 0
