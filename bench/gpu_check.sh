#!/usr/bin/env bash
# One table of the GPU paths on one CUDA GPU:
#   bench.gpu_speed        the train step at the paper setting (fp32, bf16, + channels_last, + compile:
#                          ms/step, img/s, peak memory), a one-GPU torchrun of the trainer with DDP, and
#                          the demo's train (one-process torchrun), segmenter and evaluate stages on the
#                          GPU when the pipeline's dependencies are installed;
#   bench.gpu_paths_check  the GPU-path checks of issue #16 (DDP, SyncBatchNorm, precision, syncs...).
# Needs torch, torchvision and numpy only for the gaugan rows; runs the benches as modules from the
# repository root (`python -m bench.<name>`), so the project need not be installed.
# Usage: bash bench/gpu_check.sh [--cpu] [bench.gpu_speed options, e.g. --no-compile --batch 8]
#   (--cpu: the same code paths, tiny, on the CPU: a dry run)
set -uo pipefail
cd "$(dirname "$0")/.."
export DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1 NO_ALBUMENTATIONS_UPDATE=1
PY=${PYTHON:-python}
MODE=()
if [[ "${1:-}" == "--cpu" ]]; then MODE=(--cpu); shift; fi
status=0
start=$(date +%s)
$PY -m bench.gpu_speed "${MODE[@]}" "$@" || status=1
$PY -m bench.gpu_paths_check "${MODE[@]}" --rows-only || status=1
echo "| total | $([[ $status == 0 ]] && echo ok || echo FAIL) | $(( $(date +%s) - start )) s wall |"
exit $status
