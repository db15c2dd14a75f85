#!/usr/bin/env bash
# The GPU measurements in one pass (README, "On a GPU"), each stage under its own time limit so that one
# failure does not cost the others:
#   1. abTEM's multislice on CuPy against the FFT bound on the GPU (cuFFT, 2 FFTs per slice) and against the
#      CPU multislice on the same structures (agreement of the images, speed-up), demo and paper grids;
#   2. `generate` on the GPU: the demo preset (48 structures) and a slice of the paper preset;
#   3. U-Net training throughput in fp32 and bf16, then the demo training run under `accelerate launch` in bf16.
#
#   benchmarks/gpu.sh [RESULTS_DIR] [WORKERS]      # needs CuPy and a CUDA device; $PYTHON (default python3)
#
# Logs go to RESULTS_DIR; the datasets and models it builds go to a scratch folder (removed at the end), never
# over the checkout's own tem_au_np or runs/.
set -u
PY=${PYTHON:-python3}
OUT_DIR=$(mkdir -p "${1:-gpu_results}" && cd "${1:-gpu_results}" && pwd)
WORKERS=${2:-8}
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/temsynth-gpu.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO" || exit 3

. "$REPO/benchmarks/stage.sh"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY - <<'EOF' || exit 3
import importlib
for m in ("numpy", "numba", "pyarrow", "torch", "accelerate", "datasets", "cupy", "abtem", "czone", "training.train"):
    try:
        print(m, getattr(importlib.import_module(m), "__version__", "ok"))
    except Exception as e:  # the stages that need it fail on their own; the simulation needs only the last three
        print(m, "FAILED:", repr(e)[:300])
import cupy, abtem, generators.run  # noqa: without these nothing below can run
EOF

stage sim_demo 100 $PY benchmarks/bench_simulation.py --preset demo --structures 8 --compare 2
stage sim_paper 130 $PY benchmarks/bench_simulation.py --preset paper --structures 4 --compare 1
cd "$WORK" || exit 3  # training/examples/demo.yaml reads ./tem_au_np and writes ./runs
stage gen_demo 100 $PY "$REPO/dataset_scripts/build_tem_au_np.py" --preset demo --out tem_au_np --workers "$WORKERS" --quiet
stage gen_paper 120 $([ -x /usr/bin/time ] && echo /usr/bin/time -v) $PY -m temsynth.cli generate --preset paper \
    --structures "$WORKERS" --out paper_gpu --workers "$WORKERS" --quiet
stage train_rate 60 sh -c "$PY $REPO/benchmarks/bench_training.py --dataset tem_au_np \
    --config $REPO/training/examples/realistic.yaml --steps 40 --batch-size 64 && $PY $REPO/benchmarks/bench_training.py \
    --dataset tem_au_np --config $REPO/training/examples/realistic.yaml --steps 40 --batch-size 64 --mixed-precision bf16"
stage train_demo 70 accelerate launch --num_processes 1 --mixed_precision bf16 -m training.train \
    --config "$REPO/training/examples/demo.yaml" --set mixed_precision=bf16 --set epochs=8 --quiet
