#!/usr/bin/env bash
# Does calibrating on another microscope's micrographs beat the generic preset there? A stand-in for real
# micrographs of another instrument (benchmarks/other_microscope.yaml: the realistic preset's kind of scenes,
# imaged by an uncorrected 200 kV lens near Scherzer focus on a scintillator camera, 16 labelled fields), written
# out as a real set; `temsynth calibrate` on its images alone (told the lens's Cs and the beam energy, as a user
# would be); a dataset of the proposed config and a model trained as `make realistic`'s
# (benchmarks/calibrated_realistic.sh); then both that model and the preset's scored on the 16 fields.
#
#   benchmarks/other_microscope.sh WORK_DIR PRESET_MODEL        # PRESET_MODEL: make realistic's runs/realistic/model
#
# WORK_DIR keeps everything (a re-run reuses what is finished).
set -u
PY=${PYTHON:-python3}
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mkdir -p "${1:?give a work folder}" && cd "$1" && pwd)
PRESET_MODEL=$(cd "${2:?give the preset model folder (runs/realistic/model)}" && pwd) || exit 2
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
OUT_DIR=$WORK
cd "$WORK" || exit 3
. "$REPO/benchmarks/stage.sh"

[ -f tem_np_other_microscope/manifest.json ] || stage other_fields 3600 "$PY" -m temsynth generate \
    --config "$REPO/benchmarks/other_microscope.yaml" --out tem_np_other_microscope --quiet
[ -f other_microscope/index.csv ] || stage export 600 "$PY" "$REPO/benchmarks/export_real.py" \
    tem_np_other_microscope other_microscope --split test
CALIBRATE_FLAGS="--cs-mm 1.2 --energy-keV 200" STRATIFY=material \
    "$REPO/benchmarks/calibrated_realistic.sh" "$WORK/calibrated" "$WORK/other_microscope"
STAGE_TAIL=12 stage preset_score 900 "$PY" -m temsynth score "$PRESET_MODEL" --real other_microscope \
    --out preset_scores.json
STAGE_TAIL=12 stage calibrated_score 900 "$PY" -m temsynth score calibrated/runs/calibrated/model \
    --real other_microscope --out calibrated_scores.json
