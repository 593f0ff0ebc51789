#!/usr/bin/env bash
# Every GPU check and benchmark of the project, as one short script for a CUDA machine.
#
#   bash benchmarks/gpu_checks.sh [OUT_DIR]        # default OUT_DIR: $OUT, else runs/gpu
#
# Needs python with torch (CUDA), pytest, tqdm and safetensors; mpokit is taken from src/ (no install).
# Each step writes OUT_DIR/<step>.log and is cut off after $LIMIT seconds (default 240), so a slow
# step cannot use up a rationed device session. Steps:
#   tests             tests/test_devices.py (layers vs dense on cuda) and the CUDA tests of test_mpo.py
#   bench_layers_*    MPOLinear vs nn.Linear on cuda, fp32 and bf16 (peers skipped: not on the device)
#   bench_lstm_cuda   MPOLSTM vs nn.LSTM (cuDNN) on cuda, automatic plan and fused
set -uo pipefail
out=${1:-${OUT:-runs/gpu}}
mkdir -p "$out"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python}
limit=${LIMIT:-240}

step() {
    local name=$1
    shift
    echo "== $name: $*"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "   exit $? after $((SECONDS - t0)) s; last lines:"
    tail -n 4 "$out/$name.log" | sed 's/^/   /'
}

$py -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" \
    | tee "$out/device.txt" || exit 1
step tests $py -m pytest -q -p no:cacheprovider tests/test_devices.py tests/test_mpo.py -k "cuda or test_devices"
step bench_layers_fp32 $py benchmarks/bench_layers.py --device cuda --dtype fp32 --no-peers
step bench_layers_bf16 $py benchmarks/bench_layers.py --device cuda --dtype bf16 --no-peers
step bench_lstm_cuda $py benchmarks/bench_lstm.py --device cuda
step bench_lstm_cuda_fused $py benchmarks/bench_lstm.py --device cuda --execution fused
