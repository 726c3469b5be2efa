#!/usr/bin/env bash
# The prepared GPU check: one script to run when a session is lent a GPU (the device tool's `run`,
# from the repository root, timeout_s 540). Everything else builds, trains and tests on the CPU.
#
#   1. the devices TensorFlow sees, and nvidia-smi;
#   2. synthetic training throughput of fusionnet-cifar and msdnet-cifar-anytime at the paper's
#      batch 512: float32, mixed float16, and mixed float16 with XLA (benchmarks/train_throughput.py);
#   3. a few steps of the paper's recipe through train.py (CutMix/MixUp on every batch, label
#      smoothing, warmup + cosine, coupled weight decay) in mixed float16 with XLA, on the embedded
#      sample: the loss must stay finite and the run must evaluate.
# Writes into $OUT (the device tool's folder that comes back), else /tmp/gpu_check.
#
# The device images seen so far (2026-12) have PyTorch and JAX but no TensorFlow, and a wheel of
# TensorFlow (about 600 MB) cannot travel with the working tree (64 MiB): this script then stops
# at step 0 with one line and exit 3, spending seconds, not the session's device minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export TF_CPP_MIN_LOG_LEVEL=1

if ! python -c "import tensorflow, keras" >/dev/null 2>&1; then
  echo "gpu_check: no TensorFlow/Keras on this machine ($(python --version 2>&1)); nothing measured" | tee "$OUT/summary.txt"
  exit 3
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python -c "import tensorflow as tf; print(tf.__version__, tf.config.list_physical_devices('GPU'))" | tee "$OUT/devices.txt"

timeout 300 python benchmarks/train_throughput.py --baseline '' --presets fusionnet-cifar,msdnet-cifar-anytime \
  --variants float32,mixed_float16,mixed_float16+xla --batch_size 512 --rounds 2 --warmup_steps 5 --steps 20 \
  --threads 0x0 --out "$OUT/train_throughput_gpu.json" > "$OUT/throughput.log" 2>&1
echo "throughput: exit $?" | tee -a "$OUT/summary.txt"

# The sample holds 500 training images: batch 128 (the rate scales with it), 3 steps an epoch.
timeout 180 python train.py --preset fusionnet-cifar --epochs 3 --batch_size 128 --mix_prob 1.0 --val_size 100 \
  --precision mixed_float16 --jit_compile on --output "$OUT/recipe_run" --verbose 2 > "$OUT/recipe.log" 2>&1
echo "recipe (train.py, mixed_float16 + XLA): exit $?" | tee -a "$OUT/summary.txt"
timeout 60 python evaluate.py --run "$OUT/recipe_run" >> "$OUT/recipe.log" 2>&1
echo "recipe evaluate: exit $?" | tee -a "$OUT/summary.txt"
cp "$OUT/recipe_run/log.csv" "$OUT/recipe_log.csv" 2>/dev/null
rm -rf "$OUT/recipe_run"  # what comes back is limited to 8 files
tail -3 "$OUT/recipe.log"
