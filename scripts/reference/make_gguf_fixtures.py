#!/usr/bin/env python3
"""GGUF test fixtures under tests/fixtures/gguf/, written with the `gguf` Python package and checked
against transformers (pinned in requirements.txt). Run after make_fixtures.py:

    .venv-ref/bin/python scripts/reference/make_gguf_fixtures.py

Writes:
- `dequant.json`: for each ggml type (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K), two blocks of
  random bytes (scale fields set to finite f16 values) and the values `gguf.quants.dequantize` gives.
- `llama-gqa.gguf`: the llama-gqa fixture converted the way llama.cpp does (Q and K rows permuted for
  its RoPE layout), with mixed tensor types (F32 norms, F16 embedding, BF16 output, Q8_0 attention,
  Q4_1 gate/up, Q4_0 down), a gpt2 tokenizer with pre-tokenizer `llama-bpe`, BOS added, a chat template.
- `llama-tied.gguf`: the llama-tied fixture, tied embeddings (no `output.weight`), F32, a gpt2 tokenizer
  with an unknown pre-tokenizer name (plain byte-level split, like SmolLM2's `smollm`), no BOS.
- `phi3-longrope.gguf`: the phi3-longrope fixture as llama.cpp writes Phi-3 (fused `attn_qkv` and `ffn_up`, f32,
  longrope factors as `rope_factors_{short,long}` tensors, original context, attention factor and sliding
  window in metadata); checked against its Hugging Face folder in the Rust tests.
- `spm-tokenizer.gguf`: a tokenizer-only file with a `llama` (SentencePiece) vocabulary: scores, byte
  tokens, control tokens.
- `reference.json`: for each model file, transformers' last-position logits (note: transformers 5.24
  ignores `llama.rope.scaling.*` in GGUF files, so llama-tied.gguf's logits here are unscaled and
  the Rust tests compare that file with its Hugging Face folder instead) after loading the GGUF
  (`from_pretrained(..., gguf_file=...)`, f32); for every file, transformers' token ids of a test set.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter, TokenType
from gguf.quants import dequantize, quantize
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
OUT = FIXTURES / "gguf"

TEST_SET = [
    "Hello world",
    "The copper lantern is under the bridge, near 7 stones.",
    "digits 0123456789 and 3.14159 and 1,000,000",
    "unicode: café naïve Ünïcödé 漢字 😀 ü",
    "whitespace   runs\t\ttabs\n\nnewlines    end  ",
    "  leading spaces",
    "specials <|eot_id|> and <|begin_of_text|> and <|im_start|>user<|im_end|>",
    "",
]

BLOCK_TYPES = {
    "F32": (Q.F32, 1, 4), "F16": (Q.F16, 1, 2), "BF16": (Q.BF16, 1, 2),
    "Q8_0": (Q.Q8_0, 32, 34), "Q4_0": (Q.Q4_0, 32, 18), "Q4_1": (Q.Q4_1, 32, 20),
    "Q4_K": (Q.Q4_K, 256, 144), "Q5_K": (Q.Q5_K, 256, 176), "Q6_K": (Q.Q6_K, 256, 210),
}
# Byte offsets of the f16 scale fields inside one block.
HALF_FIELDS = {"Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}


def dequant_vectors(rng: np.random.Generator) -> dict:
    out = {}
    for name, (qtype, block_elems, block_bytes) in BLOCK_TYPES.items():
        blocks = 2 if block_elems > 1 else 64
        raw = bytearray(rng.integers(0, 256, size=blocks * block_bytes, dtype=np.uint8).tobytes())
        if name in ("F32", "F16", "BF16"):
            values = rng.normal(size=blocks).astype(np.float32)
            raw = bytearray({"F32": values, "F16": values.astype(np.float16),
                             "BF16": (values.view(np.uint32) >> 16).astype(np.uint16)}[name].tobytes())
        for b in range(blocks):
            for at in HALF_FIELDS.get(name, []):
                scale = np.float16(rng.uniform(0.001, 0.1) * rng.choice([-1, 1]))
                raw[b * block_bytes + at: b * block_bytes + at + 2] = scale.tobytes()
        array = np.frombuffer(bytes(raw), dtype=np.uint8).reshape(1, -1)
        values = dequantize(array, qtype).reshape(-1)
        out[name] = {"bytes": bytes(raw).hex(), "values": [float(v) for v in values.astype(np.float32)]}
    return out


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert: interleave the two rotary halves of each head's rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tokenizer_metadata(writer: GGUFWriter, folder: Path, pre: str, add_bos: bool) -> None:
    tok = json.loads((folder / "tokenizer.json").read_text())
    config = json.loads((folder / "tokenizer_config.json").read_text())
    vocab = tok["model"]["vocab"]
    tokens = [None] * (max(vocab.values()) + 1)
    for t, i in vocab.items():
        tokens[i] = t
    specials = {a["content"]: a["id"] for a in tok["added_tokens"]}
    types = [TokenType.CONTROL if t in specials else TokenType.NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(specials[config["bos_token"]])
    writer.add_eos_token_id(specials[config["eos_token"]])
    writer.add_add_bos_token(add_bos)
    writer.add_chat_template(config["chat_template"])


def shape_metadata(writer: GGUFWriter, name: str, config: dict) -> int:
    """The shape keys every architecture writes; returns the head width."""
    writer.add_name(name)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    return config["hidden_size"] // config["num_attention_heads"]


def write_model(name: str, pre: str, add_bos: bool, types: dict) -> Path:
    folder = FIXTURES / name
    config = json.loads((folder / "config.json").read_text())
    weights = {k: v.astype(np.float32) for k, v in load_file(str(folder / "model.safetensors")).items()}
    path = OUT / f"{name}.gguf"
    writer = GGUFWriter(str(path), "llama")
    head_dim = shape_metadata(writer, name, config)
    writer.add_rope_dimension_count(head_dim)
    scaling = config.get("rope_scaling")
    if scaling:
        from gguf import RopeScalingType
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling["factor"])
    tokenizer_metadata(writer, folder, pre, add_bos)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                 "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}
    for hf, w in weights.items():
        if hf in names:
            gname = names[hf]
        else:
            layer = hf.split(".")[2]
            key = ".".join(hf.split(".")[3:-1])
            gname = f"blk.{layer}.{per_layer[key]}.weight"
            if key == "self_attn.q_proj":
                w = permute(w, config["num_attention_heads"])
            elif key == "self_attn.k_proj":
                w = permute(w, config["num_key_value_heads"])
        role = gname.split(".")[-2] if gname.startswith("blk.") else gname.split(".")[0]
        qtype = types.get(role, Q.F32)
        if qtype == Q.F32:
            writer.add_tensor(gname, w)
        elif qtype == Q.F16:
            writer.add_tensor(gname, w.astype(np.float16))
        else:
            writer.add_tensor(gname, quantize(w, qtype), raw_shape=quantize(w, qtype).shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_phi3(name: str) -> Path:
    """A Phi-3 fixture as llama.cpp converts it: fused attn_qkv and ffn_up (gate then up), NeoX RoPE
    (no row permutation), longrope factors as tensors, original context and sliding window in metadata."""
    folder = FIXTURES / name
    config = json.loads((folder / "config.json").read_text())
    weights = {k: v.astype(np.float32) for k, v in load_file(str(folder / "model.safetensors")).items()}
    path = OUT / f"{name}.gguf"
    writer = GGUFWriter(str(path), "phi3")
    head_dim = shape_metadata(writer, name, config)
    writer.add_rope_dimension_count(int(head_dim * config.get("partial_rotary_factor", 1.0)))
    original = config["original_max_position_embeddings"]
    writer.add_rope_scaling_orig_ctx_len(original)
    scale = config["max_position_embeddings"] / original
    writer.add_rope_scaling_attn_factors(float(np.sqrt(1 + np.log(scale) / np.log(original))))
    writer.add_sliding_window(config["sliding_window"])
    tokenizer_metadata(writer, folder, "llama-bpe", False)
    scaling = config["rope_scaling"]
    writer.add_tensor("rope_factors_long.weight", np.array(scaling["long_factor"], dtype=np.float32))
    writer.add_tensor("rope_factors_short.weight", np.array(scaling["short_factor"], dtype=np.float32))
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                 "self_attn.qkv_proj": "attn_qkv", "self_attn.o_proj": "attn_output",
                 "mlp.gate_up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for hf, w in weights.items():
        if hf in names:
            gname = names[hf]
        else:
            layer = hf.split(".")[2]
            gname = f"blk.{layer}.{per_layer['.'.join(hf.split('.')[3:-1])]}.weight"
        writer.add_tensor(gname, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_spm_tokenizer() -> Path:
    """A small SentencePiece-style vocabulary: <unk>, <s>, </s>, 256 byte tokens, pieces with scores."""
    rng = random.Random(5)
    pieces = ["▁", "e", "t", "a", "o", "n", "h", "s", "r", "l", "▁t", "▁th", "▁the", "he", "in", "er",
              "an", "▁a", "▁an", "▁and", "on", "▁o", "▁on", "at", "▁c", "▁co", "pp", "er", "▁cop", "▁copp",
              "▁copper", "la", "nt", "ern", "▁l", "▁la", "▁lan", "▁lant", "▁lantern", "▁b", "ri", "▁br",
              "dge", "▁bri", "▁bridge", "▁is", "▁i", "is", "un", "▁u", "▁un", "▁under", "de", "▁7", "▁s",
              "to", "▁st", "▁sto", "▁stone", "es", "▁stones", ",", ".", "▁H", "ell", "▁Hello", "▁w", "▁wor",
              "▁world", "d", "c", "w", "i", "u", "b", "p", "g"]
    seen, vocab = set(), []
    for p in pieces:
        if p not in seen:
            seen.add(p)
            vocab.append(p)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + vocab + ["<|eot_id|>"]
    types = ([TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
             + [TokenType.NORMAL] * len(vocab) + [TokenType.CONTROL])
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [-(i + rng.random()) for i in range(len(vocab))] + [0.0]
    path = OUT / "spm-tokenizer.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_scores(scores)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_uint32("tokenizer.ggml.unknown_token_id", 0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "dequant.json").write_text(json.dumps(dequant_vectors(np.random.default_rng(3))) + "\n")

    reference = {"generator": "scripts/reference/make_gguf_fixtures.py", "test_set": TEST_SET, "files": {}}
    files = [
        (write_model("llama-gqa", "llama-bpe", True,
                     {"token_embd": Q.F16, "output": Q.BF16, "attn_q": Q.Q8_0, "attn_k": Q.Q8_0,
                      "attn_v": Q.Q8_0, "attn_output": Q.Q8_0, "ffn_gate": Q.Q4_1, "ffn_up": Q.Q4_1,
                      "ffn_down": Q.Q4_0}), "llama-gqa"),
        (write_model("llama-tied", "some-unknown-pre", False, {}), "llama-tied"),
        (write_spm_tokenizer(), None),
        (write_phi3("phi3-longrope"), "phi3-longrope"),
    ]
    for path, source in files:
        tokenizer = AutoTokenizer.from_pretrained(OUT, gguf_file=path.name)
        entry = {"ids": [tokenizer(text)["input_ids"] for text in TEST_SET]}
        if source is not None and not path.name.startswith("phi3"):
            model = AutoModelForCausalLM.from_pretrained(OUT, gguf_file=path.name, dtype=torch.float32).eval()
            prompt_ids = json.loads((FIXTURES / source / "reference.json").read_text())["prompt_ids"]
            with torch.no_grad():
                entry["prompt_ids"] = prompt_ids
                entry["last_logits"] = model(torch.tensor([prompt_ids])).logits[0, -1].tolist()
        reference["files"][path.name] = entry
        print(path.name, path.stat().st_size, [len(i) for i in entry["ids"]])
    (OUT / "reference.json").write_text(json.dumps(reference) + "\n")


if __name__ == "__main__":
    main()
