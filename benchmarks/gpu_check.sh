#!/usr/bin/env bash
# The GPU figures of benchmarks/README.md in one run, on a machine with one NVIDIA GPU:
#
#     bash benchmarks/gpu_check.sh [RESULTS_DIR]        (not yet timed on a GPU: the steps run most important first)
#
# 1. the CUDA-only tests (CUDA-graph rollout == eager rollout, fused optimizer, trial memory probe);
# 2. training frames/s and the 630-frame rollout, lab-size model, every speed variant vs the lab-style path,
#    and the profiler's busiest CUDA kernels;
# 3. quality: the quick sweep's trials with every speed option against the plain fp32 path (0.3 dB);
# 4. sweep throughput at 1 and 4 trials per GPU, with GPU utilisation.
# Each step's output goes to RESULTS_DIR/NAME.txt (default gpu_results/) and the terminal, its stderr (the
# profile tables too) to NAME.err. A step that fails, or needs what is not installed (pytest, optuna,
# mlflow), is named at the end, the exit code is 1, and the other steps still run.
# PYTHON picks the interpreter (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
results=${1:-gpu_results}
python=${PYTHON:-python3}
mkdir -p "$results"
export PYTHONUNBUFFERED=1
failed=()

step() {  # step NAME COMMAND...: run COMMAND, stdout to RESULTS_DIR/NAME.txt and the terminal, stderr to NAME.err
    local name=$1
    shift
    echo "== $name: $*"
    "$@" 2>"$results/$name.err" | tee "$results/$name.txt" || failed+=("$name (see $results/$name.err)")
}

has() { "$python" -c "import $1" 2>/dev/null; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$results/gpu.txt"
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$results/gpu.txt"

if has pytest; then
    tests=(tests/test_graphs.py tests/test_schedules.py)
    selection=()
    if has optuna && has mlflow; then
        tests+=(tests/test_gpu_memory.py tests/test_sweep.py)
        selection=(-k "not test_sweep or trials_per_gpu_auto")
    fi
    step gpu_tests "$python" -m pytest -q -p no:cacheprovider "${tests[@]}" "${selection[@]}"
else
    failed+=("gpu_tests (pytest is not installed)")
fi
step train_lab "$python" benchmarks/train_throughput.py --device cuda --preset lab --batch-size 16,64 --steps 20
step train_small "$python" benchmarks/train_throughput.py --device cuda --preset small --batch-size 16,64 \
    --variants ours,+all --steps 20
step profile_lab "$python" benchmarks/train_throughput.py --device cuda --preset lab --batch-size 64 \
    --variants ours,+all --steps 10 --profile
if has optuna; then
    step quality "$python" benchmarks/quality_check.py sweeps/quick.yaml --device cuda
else
    failed+=("quality (optuna is not installed)")
fi
if has optuna && has mlflow; then
    step sweep "$python" benchmarks/sweep_throughput.py --gpus 0 --trials-per-gpu 1,4 --trials 16
else
    failed+=("sweep (optuna and mlflow are not installed)")
fi

if ((${#failed[@]})); then
    printf 'not measured: %s\n' "${failed[@]}"
    exit 1
fi
