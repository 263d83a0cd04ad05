#!/usr/bin/env bash
# The GPU-only checks of issue 13 on one CUDA GPU, as one markdown table (about 8 minutes on an H200):
# sync-free fp16/bf16 training steps, a NaN gradient skipped by the fused Adam, validation JM with IEEE vs
# TF32 convolutions, and `insanesr-dist bench train` for fp16/bf16 x channels-last x torch.compile.
# Refuses in one line where no CUDA GPU is visible. Options go to `python -m insanesr_dist.tools.gpu_checks`
# (--budget-s, --steps, --warmup, --data); run from anywhere, e.g.
#   launch/gpu_checks.sh | tee gpu_checks.md
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]]; then
    source .venv/bin/activate  # the repository's venv, as the sbatch scripts use
fi
# One GPU: the first visible one unless the caller chose.
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES-0}"
exec python -m insanesr_dist.tools.gpu_checks "$@"
