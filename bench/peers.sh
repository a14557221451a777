#!/usr/bin/env bash
# Side by side with the best CPU engines on the same model and prompts (issue 5):
#   ours (full attention and GemFilter, time to first token), llama.cpp (llama-cpp-python built from
#   source, PEERS_THREADS threads) and PyTorch + transformers (f32 eager, the same GGUF dequantised).
# Installs what it needs into a virtual environment (PyPI only), then prints one table:
# engine, tokens, prefill seconds, and our times relative to each engine.
#
# Knobs: PEERS_LENGTHS (default 1000,2000,4000,8000), PEERS_TOP_K (1024), PEERS_THREADS (2),
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

echo "== ours (full and GemFilter k=$top_k, depth 0.5), writing the prompts"
# The dev profile compiles Burn and every dependency at opt-level 3 (see Cargo.toml).
cargo build -q -p gemfilter-cli
bin="${CARGO_TARGET_DIR:-target}/debug/gemfilter"
gguf="$("$bin" fetch-demo-model)"
"$bin" needle --model "$gguf" --lengths "$lengths" --depths 0.5 \
    --methods full,gemfilter --top-k "$top_k" --max-new-tokens 1 \
    --save-prompts "$out/prompts" --output "$out/ours"

echo "== peers"
"$venv/bin/python" bench/peers.py --gguf "$gguf" --prompts "$out/prompts" \
    --ours "$out/ours/needle.json" --threads "$threads" --output "$out/peers.json" \
    ${PEERS_SKIP_TORCH:+--skip-torch}
