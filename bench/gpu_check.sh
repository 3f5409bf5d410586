#!/usr/bin/env bash
# One table of the GPU paths, in under 5 minutes on one CUDA GPU (never run on a GPU yet):
#   bench/gpu_speed.py       the train step at the paper setting (fp32, bf16, + channels_last, + compile:
#                            ms/step, img/s, peak memory), a one-GPU torchrun of the trainer with DDP, and
#                            the demo's train (one-process torchrun), segmenter and evaluate stages on the
#                            GPU when the pipeline's dependencies are installed;
#   bench/gpu_paths_check.py the GPU-path checks of issue #16 (DDP, SyncBatchNorm, precision, syncs...),
#                            when that file exists.
# Needs torch, torchvision and numpy only for the gaugan rows.
# Usage: bench/gpu_check.sh [--cpu] [gpu_speed.py options, e.g. --no-compile --batch 8]
#   (--cpu: the same code paths, tiny, on the CPU: a dry run)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true \
  DVC_NO_ANALYTICS=1 NO_ALBUMENTATIONS_UPDATE=1
PY=${PYTHON:-python}
MODE=()
if [[ "${1:-}" == "--cpu" ]]; then MODE=(--cpu); shift; fi
status=0
start=$(date +%s)
$PY bench/gpu_speed.py "${MODE[@]}" "$@" || status=1
if [[ -f bench/gpu_paths_check.py ]]; then
  $PY bench/gpu_paths_check.py "${MODE[@]}" --rows-only || status=1
else
  echo "| gpu_paths_check | skip | bench/gpu_paths_check.py not in this checkout |"
fi
echo "| total | $([[ $status == 0 ]] && echo ok || echo FAIL) | $(( $(date +%s) - start )) s wall |"
exit $status
