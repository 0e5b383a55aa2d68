#!/usr/bin/env bash
# The GPU check (see benchmarks/gpu_check.py): one table of bf16 MFU, FP8 vs bf16, attention kernels, FSDP2 and decoding.
#   bash benchmarks/gpu_check.sh            # one H100/H200, <= 8 minutes; writes benchmarks/RESULTS_gpu.md
#   bash benchmarks/gpu_check.sh --dry-run  # CPU, tiny sizes: every step runs (what CI checks)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
