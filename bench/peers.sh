#!/usr/bin/env bash
# Side by side with llama.cpp (and PyTorch) on the same GGUF and the same prompts: prefill time,
# decode tokens/s and peak RSS of every engine and method, each run in a fresh process.
# Installs what it needs into a virtual environment (PyPI only), then prints one table with the
# ratios of ours to llama.cpp.
#
# Knobs: PEERS_LENGTHS (default 1000,2000,4000,8000), PEERS_TOP_K (1024), PEERS_THREADS (2),
#        PEERS_DECODE (32 decoded tokens timed), PEERS_WEIGHTS (native), PEERS_MODEL (the demo GGUF),
#        PEERS_VENV (~/.cache/gemfilter-rs/peers-venv), PEERS_OUT (target/peers), PEERS_SKIP_TORCH=1.
set -euo pipefail
cd "$(dirname "$0")/.."

lengths="${PEERS_LENGTHS:-1000,2000,4000,8000}"
top_k="${PEERS_TOP_K:-1024}"
threads="${PEERS_THREADS:-2}"
venv="${PEERS_VENV:-$HOME/.cache/gemfilter-rs/peers-venv}"
out="${PEERS_OUT:-target/peers}"
mkdir -p "$out"

echo "== engines"
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
"$venv/bin/pip" install -q --upgrade pip
# llama.cpp from source (no prebuilt wheel), as the issue asks; then torch/transformers as pinned
# for the reference fixtures.
CMAKE_ARGS="-DGGML_NATIVE=ON" "$venv/bin/pip" install -q --no-binary llama-cpp-python \
    "llama-cpp-python==0.3.36"
if [ -z "${PEERS_SKIP_TORCH:-}" ]; then
    "$venv/bin/pip" install -q -r scripts/reference/requirements.txt gguf
fi

echo "== the prompts (needle at depth 0.5)"
# The dev profile compiles Burn and every dependency at opt-level 3 (see Cargo.toml).
cargo build -q -p gemfilter-cli
bin="${CARGO_TARGET_DIR:-target}/debug/gemfilter"
gguf="${PEERS_MODEL:-$("$bin" fetch-demo-model)}"
"$bin" needle --model "$gguf" --lengths "$lengths" --depths 0.5 \
    --save-prompts "$out/prompts" --prompts-only

echo "== llama.cpp, ours (full, GemFilter k=$top_k, --weights ${PEERS_WEIGHTS:-native}), PyTorch"
"$venv/bin/python" bench/peers.py --gguf "$gguf" --prompts "$out/prompts" --bin "$bin" \
    --weights "${PEERS_WEIGHTS:-native}" --top-k "$top_k" --decode "${PEERS_DECODE:-32}" \
    --threads "$threads" --output "$out/peers.json" ${PEERS_SKIP_TORCH:+--skip-torch}
