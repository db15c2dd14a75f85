#!/usr/bin/env bash
# Does a config calibrated on the real micrographs' own images (no labels) train a model as good as the
# hand-tuned `realistic` preset? `temsynth calibrate` on the real set, the proposed config built with the preset's
# number of scenes, a U-Net trained with the same training config as `make realistic` (realistic.yaml), scored on
# the 16 real fields (benchmarks/bench_real.py). 85 minutes measured on the shared, loaded 2 cores (28 of them
# generation); make realistic's stages suggest about 20 on 2 free cores.
#
#   benchmarks/calibrated_realistic.sh WORK_DIR [REAL_DIR=temsynth/data/real/hrtem_generalization]
#
# WORK_DIR keeps the dataset, the model and the logs (a re-run reuses what is finished). CALIBRATE_FLAGS: more
# options for calibrate (e.g. "--cs-mm 1.2 --energy-keV 200" for another microscope's files that record neither);
# STRATIFY: the columns the real set's halves are balanced on (default material,nominal_diameter_nm).
set -u
PY=${PYTHON:-python3}
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mkdir -p "${1:?give a work folder}" && cd "$1" && pwd)
REAL=$(cd "${2:-$REPO/temsynth/data/real/hrtem_generalization}" && pwd) || exit 2
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
OUT_DIR=$WORK
cd "$WORK" || exit 3
. "$REPO/benchmarks/stage.sh"

# shellcheck disable=SC2086  # CALIBRATE_FLAGS is a list of options
stage calibrate 600 "$PY" -m temsynth calibrate "$REAL" --pixel-sizes "$REAL/index.csv" ${CALIBRATE_FLAGS:-} --out calibrated.yaml
[ -d tem_np_calibrated ] || stage generate 7200 "$PY" -m temsynth generate --config calibrated.yaml --out tem_np_calibrated --quiet
[ -d real_exp ] || stage import 600 "$PY" "$REPO/dataset_scripts/import_experimental.py" "$REAL" --pixel-sizes "$REAL/index.csv" \
    --target-pixel-size-A 0.7 --tile-px 144 --finetune-fraction 0.5 --seed 0 --stratify-by "${STRATIFY:-material,nominal_diameter_nm}" --out real_exp
sed -e "s/tem_np_realistic/tem_np_calibrated/g" -e "s#runs/realistic#runs/calibrated#" "$REPO/training/examples/realistic.yaml" > train_calibrated.yaml
stage train 7200 "$PY" -m training.train --config train_calibrated.yaml --quiet
STAGE_TAIL=30 stage score 900 "$PY" "$REPO/benchmarks/bench_real.py" runs/calibrated/model --real "$REAL" \
    --out runs/calibrated/real_scores.json
