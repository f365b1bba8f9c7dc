#!/usr/bin/env bash
# Run ON the GPU machine (the device tool), from the repo root, carrying .whl (bench/gpu_wheels.sh) and
# data/fashion-mnist; about 7 minutes. Prints the device, the dtype policies, a fixed ~95k-parameter
# Fashion-MNIST CNN's training throughput (images/s) inside a nas trial and in a bare Keras fit, for JAX and
# PyTorch, float32 and mixed precision, with and without XLA, then a 4-minute nas search on JAX.
# Goal (issue 12): >= 100,000 images/s in a nas trial (JAX, mixed precision, XLA, on-device augmentation), and
# >= 0.9x the bare fit with the same settings.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, torch, keras; print('jax', jax.__version__, jax.devices()); \
print('torch', torch.__version__, torch.cuda.get_device_name(0)); print('keras', keras.__version__)"
SPEED="timeout 100 python3 bench/backends_speed.py --epochs 4 --batch-size 512"
$SPEED --variants jax jax-bare --precision mixed --jit true
$SPEED --variants jax --precision float32 --jit true
$SPEED --variants jax --precision mixed --jit false
$SPEED --variants torch torch-bare --precision mixed --jit false
$SPEED --variants torch --precision float32 --jit false
# The shipped Fashion-MNIST space on JAX, without MLflow (not installed there) and without export (no TFLite).
sed -e 's/^train:$/train:\n  backend: jax/' -e 's/^  enabled: true$/  enabled: false/' \
    -e 's/^  after_search: true .*$/  after_search: false/' -e 's#idx:../data/fashion-mnist#idx:'"$PWD"'/data/fashion-mnist#' \
    search_spaces/fashion_mnist.yaml > /tmp/gpu_search.yaml
timeout 300 python3 -m nas search /tmp/gpu_search.yaml --budget 4m --runs-dir /tmp/gpu-runs
cat /tmp/gpu-runs/fashion_mnist/best/metrics.json 2>/dev/null | head -20
