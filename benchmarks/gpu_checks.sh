#!/usr/bin/env bash
# Every GPU check and benchmark of the project, as one short script for a CUDA machine.
#
#   bash benchmarks/gpu_checks.sh [OUT_DIR]        # default OUT_DIR: $OUT, else runs/gpu
#   bash benchmarks/gpu_checks.sh OUT_DIR lstm     # the LSTM experiments of issue 6 instead (below)
#
# Needs python with torch (CUDA), pytest, tqdm and safetensors; mpokit is taken from src/ (no install).
# Each step writes OUT_DIR/<step>.log and is cut off after $LIMIT seconds (default 240), so a slow
# step cannot use up a rationed device session. Steps:
#   tests             tests/test_devices.py (layers vs dense on cuda) and the CUDA tests of test_mpo.py
#   bench_layers_*    MPOLinear vs nn.Linear on cuda, fp32 and bf16 (peers skipped: not on the device)
#   bench_lstm_cuda   MPOLSTM vs nn.LSTM (cuDNN) on cuda, automatic plan and fused
#   inference_tests   issue 19: the inference policies and generation on cuda (tests/test_inference.py -k cuda)
#   export_tests      issue 19: torch.export of an MPO model on cuda (tests/test_export.py -k cuda; its ONNX part
#                     runs only where onnx, onnxscript and onnxruntime are installed, else it is skipped)
#   bench_inference_cuda  issue 19: bench_inference.py --quick on cuda, MiniLM's architecture with random weights
#                     (the device has no model packages): dense, MPO 50% under every policy, merged; the
#                     checkpoints are written into runs/bench_inference_cache first (about a minute on the CPU)
#
# The `lstm` mode runs `mpokit lstm classify|lm` with --device cuda, each step resumable (--resume), so
# a step cut off by $LIMIT keeps its finished runs in OUT_DIR/<step>/runs.csv. The device has no data
# packages: first, here, `python -m mpokit.recipes.data.files data_files` (git-ignored; name data_files in the
# device call's carry). Steps: rt_full (Rotten Tomatoes, full preset, rates 10 and 50, seeds 0-2, the
# four methods, lr 2e-3) and ptb_full (PTB, full preset, rate 10, seed 0, the four methods). Back here,
# `mpokit lstm classify --combine OUT_DIR/rt_full --out runs/gpu_rt_full` writes the table and plot.
# Dry run on the CPU: DEVICE=cpu LSTM_PRESET=tiny bash benchmarks/gpu_checks.sh /tmp/out lstm
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

if [ "${2:-checks}" = lstm ]; then
    device=${DEVICE:-cuda}
    preset=${LSTM_PRESET:-full}
    export MPOKIT_DATA_DIR=${MPOKIT_DATA_DIR:-data_files}
    lstm="$py -m mpokit lstm"
    common="--preset $preset --methods dense,mpo,pruning,mpo_gradual --device $device --no-progress --resume"
    step rt_full $lstm classify $common --rates 10,50 --seeds 0,1,2 --lr 2e-3 --out "$out/rt_full"
    step ptb_full $lstm lm $common --rates 10 --seeds 0 --out "$out/ptb_full"
    # the device hands back at most 8 files: keep runs.csv + config.json per step (tables and plots
    # come back here with `mpokit lstm classify|lm --combine OUT_DIR/rt_full --out DIR`)
    rm -f "$out"/*/results.md "$out"/*/*.png
    exit 0
fi
$py -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" \
    | tee "$out/device.txt" || exit 1
step tests $py -m pytest -q -p no:cacheprovider tests/test_devices.py tests/test_mpo.py -k "cuda or test_devices"
step bench_layers_fp32 $py benchmarks/bench_layers.py --device cuda --dtype fp32 --no-peers
step bench_layers_bf16 $py benchmarks/bench_layers.py --device cuda --dtype bf16 --no-peers
step bench_lstm_cuda $py benchmarks/bench_lstm.py --device cuda
step bench_lstm_cuda_fused $py benchmarks/bench_lstm.py --device cuda --execution fused
step inference_tests $py -m pytest -q -p no:cacheprovider tests/test_inference.py -k cuda
step export_tests $py -m pytest -q -p no:cacheprovider tests/test_export.py -k cuda
step bench_inference_cuda $py benchmarks/bench_inference.py --device cuda --random-weights --quick --models minilm \
    --timeout 120 --out "$out/bench_inference"
