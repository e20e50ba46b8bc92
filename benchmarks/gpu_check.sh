#!/usr/bin/env bash
# The engine's GPU check, in one prepared run (under 8 minutes on one NVIDIA GPU with only
# PyTorch and Triton installed; no Ray, no MLflow):
#   1. the CUDA correctness checks (benchmarks/gpu_check.py; plus the CUDA tests of
#      tests/trainables/test_engine.py where pytest is installed),
#   2. the real trainer on CUDA (benchmarks/gpu_train_check.py: copying, smoke preset, 16 seeds
#      as members; Triton with and without CUDA graphs, and the PyTorch path),
#   3. the engine benchmark: authors' loop, cuDNN nn.LSTM, engine torch / triton / triton +
#      CUDA graphs at K = 1, 16, 64 seed members, both paper shapes.
# Writes gpu_check.json (and the logs) into $OUT if set, else into benchmarks/.
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
  timeout 150 "$PY" -m pytest -q -p no:cacheprovider --noconftest -o addopts="" \
    tests/trainables/test_engine.py -k test_cuda 2>&1 | tee "$dest/gpu_pytest.log" || status=1
fi
timeout 200 "$PY" benchmarks/gpu_train_check.py --out "$dest/gpu_train_check.json" 2>&1 \
  | tee "$dest/gpu_train_check.log" || status=1
timeout 400 "$PY" benchmarks/gpu_check.py --out "$dest/gpu_check.json" --budget 300 --repeats 9 2>&1 \
  | tee "$dest/gpu_check.log" || status=1
exit $status
