#!/usr/bin/env bash
# The CUDA check, in under 5 minutes: the tests marked `cuda` (timing, solvers and data
# reconstruction on the GPU), then the layer table of scripts/bench_latency.py benched on CUDA
# (torch synchronises around every timed call), written to docs/latency_cuda.md (or $1).
# On a machine without CUDA it exits at once, saying so, with status 0.
#   bash scripts/cuda_check.sh [OUT.md]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "cuda_check: no CUDA device here (torch.cuda.is_available() is False); nothing to check"
  exit 0
fi
out="${1:-docs/latency_cuda.md}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
timeout 120 python -m pytest -q -m cuda
timeout 170 python scripts/bench_latency.py --device cuda --models alexnet_cifar alexnet --batch-sizes 1 32 \
  --memory-format channels_last --out "$out"
echo "cuda_check: wrote $out"
