#!/usr/bin/env bash
# The engine's GPU check, in one prepared run (under 8 minutes on one NVIDIA GPU with only
# PyTorch and Triton installed; no Ray, no MLflow):
#   1. the CUDA tests (where pytest is installed): those of tests/trainables/test_engine.py
#      (torch, triton and persistent backends against the oracle and cuDNN) and
#      tests/trainables/test_persistent.py (the persistent kernels on CUDA: several batch
#      tiles, padded columns, chunked inference, TF32's checks; the cost arithmetic),
#   2. the real trainer on CUDA (benchmarks/gpu_train_check.py: copying, smoke preset, 16 seeds
#      as members; Triton with and without CUDA graphs, the PyTorch path, the persistent
#      backend in fp32 and TF32 with their validation curves),
#   3. the engine check and benchmark (benchmarks/gpu_check.py): the correctness checks
#      (persistent fp32/TF32 error against the fp64 oracle included), then the authors' loop,
#      cuDNN nn.LSTM, engine torch / triton / triton + CUDA graphs / persistent fp32 / TF32 at
#      K = 1, 16, 64 seed members on both paper shapes, each row's FP32-peak fraction, the
#      persistent loop's FLOP/L2 bounds and the GPU-hours of C1, C2 and C5.
# Writes gpu_check.json, gpu_train_check.json and the logs into $OUT if set, else into
# benchmarks/; keep the JSONs under benchmarks/results/ with the device and date in the name.
#
#   bash benchmarks/gpu_check.sh
set -u -o pipefail
cd "$(dirname "$0")/.."
dest="${OUT:-benchmarks}"
mkdir -p "$dest"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"

"$PY" -c "import torch, triton; assert torch.cuda.is_available(), 'CUDA is not available'" \
  || { echo "gpu_check: needs one NVIDIA GPU with PyTorch and Triton" >&2; exit 2; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

status=0
if "$PY" -c "import pytest" 2>/dev/null; then
  # Only the CUDA tests; the suite's shared fixtures (MLflow server, browser) are not needed.
  timeout 170 "$PY" -m pytest -q -p no:cacheprovider --noconftest -o addopts="" \
    tests/trainables/test_engine.py tests/trainables/test_persistent.py \
    -k "test_cuda or test_persistent" 2>&1 \
    | tee "$dest/gpu_pytest.log" || status=1
fi
timeout 150 "$PY" benchmarks/gpu_train_check.py --out "$dest/gpu_train_check.json" 2>&1 \
  | tee "$dest/gpu_train_check.log" || status=1
timeout 330 "$PY" benchmarks/gpu_check.py --out "$dest/gpu_check.json" --budget 270 --repeats 7 2>&1 \
  | tee "$dest/gpu_check.log" || status=1
exit $status
