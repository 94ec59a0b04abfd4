#!/usr/bin/env bash
# The GPU figures of benchmarks/README.md in one run, on a machine with one NVIDIA GPU:
#
#     bash benchmarks/gpu_check.sh [RESULTS_DIR]        (about 10 minutes on an H100-class GPU)
#
# 1. the CUDA-only tests (CUDA-graph rollout == eager rollout, fused optimizer, trial memory probe);
# 2. training frames/s and the 630-frame rollout, lab-size model, every speed variant vs the lab-style path;
# 3. quality: the quick sweep's trials with every speed option against the plain fp32 path (0.3 dB);
# 4. sweep throughput at 1 and 4 trials per GPU, with GPU utilisation (needs optuna and mlflow).
# Each step's output goes to RESULTS_DIR (default gpu_results/) and to the terminal.
set -euo pipefail
cd "$(dirname "$0")/.."
results=${1:-gpu_results}
mkdir -p "$results"
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$results/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$results/gpu.txt"

python3 -m pytest -q -p no:cacheprovider tests/test_graphs.py tests/test_schedules.py tests/test_gpu_memory.py \
    2>&1 | tee "$results/gpu_tests.txt"

python3 benchmarks/train_throughput.py --device cuda --preset lab --batch-size 16,64 --steps 20 \
    2>"$results/train_lab.err" | tee "$results/train_lab.txt"
python3 benchmarks/train_throughput.py --device cuda --preset lab --batch-size 64 --variants ours,+all --profile \
    --steps 10 2>&1 >/dev/null | grep -v "^\(USDT\|ERROR\|STAGE\)" | tee "$results/profile_lab.txt"

python3 benchmarks/quality_check.py sweeps/quick.yaml --device cuda 2>"$results/quality.err" \
    | tee "$results/quality.txt"

if python3 -c "import optuna, mlflow" 2>/dev/null; then
    python3 benchmarks/sweep_throughput.py --gpus 0 --trials-per-gpu 1,4 --trials 16 2>"$results/sweep.err" \
        | tee "$results/sweep.txt"
else
    echo "sweep throughput skipped: optuna and mlflow are not installed" | tee "$results/sweep.txt"
fi
