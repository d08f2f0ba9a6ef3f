#!/usr/bin/env bash
# The CUDA check, in under 10 minutes, each step bounded so that one that runs out leaves the others:
#  1. the committed CP and Scheme 2 runs' dense and final networks in float32, float16 and bfloat16
#     (acc@1 on the CIFAR-10 test images in that dtype, speed-up at batch 1/32/256):
#     scripts/cuda_networks.py -> OUT_DIR/cuda_networks.md;
#  2. the tests marked `cuda` (timing, solvers and data reconstruction on the GPU);
#  3. the layer table of scripts/bench_latency.py on CUDA, float32 -> OUT_DIR/latency_cuda.md
#     (written after each model, so a step cut short keeps what it measured).
# On a machine without CUDA it exits at once, saying so, with status 0.
#   bash scripts/cuda_check.sh [OUT_DIR]     (default: docs; the test images from $LRX_DATA_ROOT)
set -uo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "cuda_check: no CUDA device here (torch.cuda.is_available() is False); nothing to check"
  exit 0
fi
out="${1:-docs}"
test_batch="${LRX_DATA_ROOT:-../shared/data}/cifar-10-batches-bin/test_batch.bin"
status=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
timeout 170 python scripts/cuda_networks.py results/runs/cp_multiple16_ft2 results/runs/scheme2_3x \
  --test-batch "$test_batch" --out "$out/cuda_networks.md" || status=1
timeout 120 python -m pytest -q -m cuda tests/test_latency.py tests/test_lowrank_solvers.py tests/test_data_recon.py || status=1
timeout 300 python scripts/bench_latency.py --device cuda --models alexnet alexnet_cifar --batch-sizes 32 \
  --memory-format channels_last --out "$out/latency_cuda.md" || status=1
echo "cuda_check: status $status (non-zero: a step failed or ran out of time; its output is above)"
exit $status
