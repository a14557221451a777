#!/usr/bin/env python3
"""A published model shape as a GGUF file of random packed weights, for memory and speed benchmarks
of models too large to ship (never committed; written at benchmark time).

    python3 -m venv /tmp/g && /tmp/g/bin/pip install gguf==0.19.0 numpy==2.4.6
    /tmp/g/bin/python bench/make_synthetic_gguf.py --shape llama-3.1-8b --type q4_0 --out /tmp/llama8b-q4_0.gguf

Every matrix (embedding, attention, MLP, output) is stored in `--type` with random 4/8-bit values and
finite, realistic per-block f16 scales (a weight standard deviation of about 0.02, as trained LLaMA
layers have); norms are f32 ones. The tokenizer is GPT-2 byte-level (one token per byte) padded with
reserved tokens to the shape's vocabulary, so any text becomes a prompt. Tensors are streamed to the
file one at a time: memory stays at one tensor.
"""

from __future__ import annotations

import argparse

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter, TokenType

SHAPES = {
    "llama-3.1-8b": dict(layers=32, hidden=4096, ffn=14336, heads=32, kv_heads=8, vocab=128256,
                         rope_theta=500000.0, context=131072, eps=1e-5),
    "smollm2-135m": dict(layers=30, hidden=576, ffn=1536, heads=9, kv_heads=3, vocab=49152,
                         rope_theta=100000.0, context=8192, eps=1e-5),
}
TYPES = {"q4_0": (Q.Q4_0, 18), "q8_0": (Q.Q8_0, 34)}


def byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def packed_blocks(rng: np.random.Generator, rows: int, cols: int, qtype: Q, block_bytes: int) -> np.ndarray:
    """Random blocks with f16 scales giving weights of standard deviation ≈ 0.02."""
    blocks = rows * cols // 32
    data = rng.integers(0, 256, size=(blocks, block_bytes), dtype=np.uint8)
    # A uniform 4-bit value (−8..7) has std ≈ 4.6, an 8-bit one (−128..127) ≈ 74.
    target = 0.02 / (4.6 if qtype == Q.Q4_0 else 74.0)
    scales = (target * rng.uniform(0.5, 1.5, size=blocks)).astype(np.float16)
    data[:, 0:2] = scales.view(np.uint8).reshape(blocks, 2)
    if qtype == Q.Q8_0:
        data[:, 2:] = np.where(data[:, 2:] == 0x80, 0x81, data[:, 2:])  # no −128, as ggml writes
    return data.reshape(rows, cols // 32 * block_bytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.1-8b")
    parser.add_argument("--type", choices=sorted(TYPES), default="q4_0")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    s = SHAPES[args.shape]
    qtype, block_bytes = TYPES[args.type]
    rng = np.random.default_rng(args.seed)
    head_dim = s["hidden"] // s["heads"]
    kv = s["kv_heads"] * head_dim

    writer = GGUFWriter(args.out, "llama")
    writer.add_name(f"{args.shape}-random-{args.type}")
    writer.add_block_count(s["layers"])
    writer.add_context_length(s["context"])
    writer.add_embedding_length(s["hidden"])
    writer.add_feed_forward_length(s["ffn"])
    writer.add_head_count(s["heads"])
    writer.add_head_count_kv(s["kv_heads"])
    writer.add_rope_freq_base(s["rope_theta"])
    writer.add_layer_norm_rms_eps(s["eps"])
    writer.add_vocab_size(s["vocab"])
    writer.add_file_type(int(qtype))

    alphabet = byte_alphabet()
    tokens = alphabet + ["Ġt"] + [f"<|reserved_{i}|>" for i in range(s["vocab"] - 257)]
    types = [TokenType.NORMAL] * 257 + [TokenType.CONTROL] * (s["vocab"] - 257)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(["Ġ t"])
    writer.add_bos_token_id(257)
    writer.add_eos_token_id(258)
    writer.add_add_bos_token(False)

    matrices = [("token_embd.weight", s["vocab"], s["hidden"])]
    norms = [("output_norm.weight", s["hidden"])]
    for i in range(s["layers"]):
        matrices += [
            (f"blk.{i}.attn_q.weight", s["hidden"], s["hidden"]),
            (f"blk.{i}.attn_k.weight", kv, s["hidden"]),
            (f"blk.{i}.attn_v.weight", kv, s["hidden"]),
            (f"blk.{i}.attn_output.weight", s["hidden"], s["hidden"]),
            (f"blk.{i}.ffn_gate.weight", s["ffn"], s["hidden"]),
            (f"blk.{i}.ffn_up.weight", s["ffn"], s["hidden"]),
            (f"blk.{i}.ffn_down.weight", s["hidden"], s["ffn"]),
        ]
        norms += [(f"blk.{i}.attn_norm.weight", s["hidden"]), (f"blk.{i}.ffn_norm.weight", s["hidden"])]
    matrices.append(("output.weight", s["vocab"], s["hidden"]))

    for name, rows, cols in matrices:
        nbytes = rows * cols // 32 * block_bytes
        writer.add_tensor_info(name, (rows, cols // 32 * block_bytes), np.dtype(np.uint8), nbytes,
                               raw_dtype=qtype)
    for name, width in norms:
        writer.add_tensor_info(name, (width,), np.dtype(np.float32), width * 4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    total = 0
    for _, rows, cols in matrices:
        block = packed_blocks(rng, rows, cols, qtype, block_bytes)
        writer.write_tensor_data(block)
        total += block.nbytes
    for _, width in norms:
        writer.write_tensor_data(np.ones(width, dtype=np.float32))
    writer.close()
    print(f"{args.out}: {len(matrices)} {args.type} matrices, {total / 2**30:.2f} GiB of packed weights")


if __name__ == "__main__":
    main()
