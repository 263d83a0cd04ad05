#!/usr/bin/env bash
# The GPU-only checks of issue 13 on one CUDA GPU, as one markdown table, within a time budget (--budget-s,
# default 450 s for the default rows, so that with start-up it fits a lease of under 10 minutes on one GPU):
# sync-free fp16 (device store on) and bf16 (device store off) training steps with TensorBoard panels, a NaN
# gradient skipped by the fused Adam, validation JM with IEEE vs TF32 convolutions, and `insanesr-dist bench
# train` eager channels-last fp16/bf16 rows (one process each). --compile adds the torch.compile rows, --extra the
# other store path of each sync run, the NCHW rows and the device store against DataLoader workers on 2K pairs.
# Each check has a cap (its share of the budget); a row not run says why. Exit 0 when every row that ran passed,
# 1 otherwise. Refuses in one line where no CUDA GPU is visible. Options go to
# `benchmarks/gpu_checks.py` (--budget-s, --compile, --extra, --steps, --warmup, --data); run
# from anywhere, e.g.
#   launch/gpu_checks.sh | tee gpu_checks.md
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]]; then
    source .venv/bin/activate  # the repository's venv, as the sbatch scripts use
fi
# One GPU: the first visible one unless the caller chose.
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES-0}"
exec python benchmarks/gpu_checks.py "$@"
