#!/usr/bin/env python3
"""Builds the tiny random LLaMA checkpoints under tests/fixtures/ and their reference outputs.

Run once (CPU is enough) with the pinned versions of requirements.txt:

    python -m venv .venv-ref && .venv-ref/bin/pip install -r scripts/reference/requirements.txt
    .venv-ref/bin/python scripts/reference/make_fixtures.py

Each fixture folder is a Hugging Face model folder written the way published checkpoints are
(config.json with `rope_theta` / `rope_scaling`, safetensors weights, tokenizer.json,
tokenizer_config.json with a chat template) plus `reference.json`:

- `prompt`, `prompt_ids`: the prompt text and the ids transformers' tokenizer gives for it;
- `last_logits`: the last-position logits of a full forward (f32, eager attention);
- `gemfilter`: kept positions and pooled scores of an independent implementation of the
  reference GemFilter selection (the official code's `standard_dis_index`), at one
  (filter_layer, top_k);
- `greedy_full`, `greedy_gemfilter`: 8 greedy tokens (EOS not treated specially), with the
  smallest top-1/top-2 logit margin seen, asserted large enough that the choice is not a near-tie;
- `chat`: a rendered chat prompt and its ids.

The references are computed from the folder as written (reloaded with from_pretrained), so the
published-style config is proven to mean the same thing to transformers.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
)
from transformers.models.llama.modeling_llama import repeat_kv
from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb  # handles partial rotary too

ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", LlamaConfig, LlamaForCausalLM),
    "mistral": ("MistralForCausalLM", MistralConfig, MistralForCausalLM),
    "phi3": ("Phi3ForCausalLM", Phi3Config, Phi3ForCausalLM),
}

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
GREEDY_TOKENS = 8
MIN_MARGIN = 0.05

# LLaMA-3's pre-tokenizer split pattern.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

WORDS = (
    "the a river stone lamp garden window quiet green orange seven keeper harbor mountain "
    "paper signal bright slowly under over between morning evening winter summer clock "
    "bridge market lantern copper silver number code secret answer question north south "
    "remember carry open close small large ancient modern kettle violin letter island"
).split()


def corpus(seed: int, lines: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 14))]
        if rng.random() < 0.3:
            words.insert(rng.randint(0, len(words)), str(rng.randint(0, 9999)))
        sentence = " ".join(words).capitalize() + rng.choice([".", "!", "?", ",", ";"])
        if rng.random() < 0.2:
            sentence += "  \t" + "ü é 😀"[rng.randint(0, 4)]
        out.append(sentence)
    return out


def train_tokenizer(specials: list[str], bos: str | None, vocab_size: int, seed: int, split: str = LLAMA3_SPLIT) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(seed, 3000), trainer=trainer)
    if bos is not None:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Init scales large enough that greedy choices are clear, small enough to stay finite."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(0.6 + 0.8 * torch.rand(p.shape, generator=gen))
            elif "embed_tokens" in name or "lm_head" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=gen) * (1.6 / fan_in**0.5))


def greedy(model, ids: list[int], steps: int) -> tuple[list[int], float]:
    out, margin = [], float("inf")
    with torch.no_grad():
        result = model(torch.tensor([ids]), use_cache=True)
        past = result.past_key_values
        logits = result.logits[0, -1]
        for _ in range(steps):
            top = torch.topk(logits, 2).values
            margin = min(margin, float(top[0] - top[1]))
            token = int(torch.argmax(logits))
            out.append(token)
            result = model(torch.tensor([[token]]), past_key_values=past, use_cache=True)
            past = result.past_key_values
            logits = result.logits[0, -1]
    return out, margin


def gemfilter_reference(model, ids: list[int], layer: int, top_k: int):
    """The official selection (q_last·Kᵀ, repeat_kv, sum over heads, avg_pool1d, topk, sort)."""
    cfg = model.config
    with torch.no_grad():
        input_ids = torch.tensor([ids])
        hidden = model(input_ids, output_hidden_states=True).hidden_states[layer]
        block = model.model.layers[layer]
        attn = block.self_attn
        x = block.input_layernorm(hidden)
        n = len(ids)
        head_dim = attn.head_dim
        if hasattr(attn, "qkv_proj"):  # Phi-3: q, k, v fused in this order
            q_width = cfg.num_attention_heads * head_dim
            kv_width = cfg.num_key_value_heads * head_dim
            qkv = attn.qkv_proj(x)
            q_flat, k_flat = qkv[..., :q_width], qkv[..., q_width : q_width + kv_width]
        else:
            q_flat, k_flat = attn.q_proj(x), attn.k_proj(x)
        q = q_flat.view(1, n, -1, head_dim).transpose(1, 2)
        k = k_flat.view(1, n, -1, head_dim).transpose(1, 2)
        position_ids = torch.arange(n).unsqueeze(0)
        cos, sin = model.model.rotary_emb(x, position_ids)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k = repeat_kv(k, cfg.num_attention_heads // cfg.num_key_value_heads)
        inner = torch.matmul(q[:, :, -1:, :], k.transpose(-1, -2))[:, :, 0, :]
        inner = torch.sum(inner, dim=1, keepdim=True)
        pooled = F.avg_pool1d(inner, kernel_size=5, padding=2, stride=1)
        top = torch.topk(pooled, min(top_k, n), dim=-1)
        positions = torch.sort(top.indices[0, 0]).values.tolist()
        values = pooled[0, 0]
        # Margin between the last kept and the first dropped pooled score.
        ranked = torch.sort(values, descending=True).values
        boundary = float(ranked[min(top_k, n) - 1] - ranked[min(top_k, n)]) if top_k < n else float("inf")
    return positions, values.tolist(), boundary


def write_weights(folder: Path, model, spec: dict) -> None:
    for old in list(folder.glob("model*.safetensors")) + list(folder.glob("model.safetensors.index.json")):
        old.unlink()
    state = {k: v.detach().to(getattr(torch, spec["dtype"])).contiguous() for k, v in model.state_dict().items()}
    if spec["tied"]:
        state.pop("lm_head.weight", None)
    shards = spec.get("shards", 1)
    if shards == 1:
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return
    names = sorted(state)
    per = (len(names) + shards - 1) // shards
    weight_map = {}
    for i in range(shards):
        part = names[i * per : (i + 1) * per]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k] for k in part}, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
    total = sum(v.numel() * v.element_size() for v in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def write_published_config(folder: Path, config: dict) -> None:
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def build(spec: dict) -> None:
    name = spec["name"]
    folder = FIXTURES / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)

    bos, eos = spec["bos"], spec["eos"]
    specials = spec["specials"]
    tok = train_tokenizer(specials, bos if spec["add_bos"] else None, spec["vocab_size"], spec["seed"],
                          spec.get("split", LLAMA3_SPLIT))
    tok.save(str(folder / "tokenizer.json"))
    vocab_size = tok.get_vocab_size()
    eos_ids = [tok.token_to_id(t) for t in eos]
    tokenizer_config = {
        "bos_token": bos,
        "eos_token": eos[0],
        "chat_template": spec["chat_template"],
        "model_max_length": spec["max_position_embeddings"],
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")

    architecture, config_class, model_class = ARCHITECTURES[spec.get("model_type", "llama")]
    published = {
        "architectures": [architecture],
        "model_type": spec.get("model_type", "llama"),
        "vocab_size": vocab_size,
        "hidden_size": spec["hidden_size"],
        "intermediate_size": spec["intermediate_size"],
        "num_hidden_layers": spec["num_layers"],
        "num_attention_heads": spec["num_heads"],
        "num_key_value_heads": spec["num_kv_heads"],
        "hidden_act": "silu",
        "max_position_embeddings": spec["max_position_embeddings"],
        "rms_norm_eps": spec["rms_norm_eps"],
        "tie_word_embeddings": spec["tied"],
        "bos_token_id": tok.token_to_id(bos),
        "eos_token_id": eos_ids[0] if spec["eos_as_int"] else eos_ids,
        "torch_dtype": spec["dtype"],
    }
    if published["model_type"] == "llama":
        published.update({"attention_bias": False, "mlp_bias": False})
    if spec.get("head_dim"):
        published["head_dim"] = spec["head_dim"]
    published.update(spec["rope_fields"])
    published.update(spec.get("extra_fields", {}))

    # Model weights: the first init seed whose greedy choices and selection boundary are clear.
    prompt = " ".join(corpus(spec["seed"] + 1, spec["prompt_sentences"]))
    for attempt in range(50):
        init_seed = spec["seed"] * 1000 + attempt
        # Built from the written config.json, as from_pretrained reads published files.
        write_published_config(folder, published)
        model = model_class(AutoConfig.from_pretrained(folder)).eval()
        randomize(model, init_seed)
        write_weights(folder, model, spec)

        # Everything below reads the folder back, as a user of transformers would.
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        ids = tokenizer(prompt)["input_ids"]
        assert ids == tok.encode(prompt).ids, "AutoTokenizer and tokenizers disagree"
        layer, top_k = spec["filter_layer"], spec["top_k"]
        positions, pooled, boundary = gemfilter_reference(model, ids, layer, top_k)
        greedy_full, margin_full = greedy(model, ids, GREEDY_TOKENS)
        reduced = [ids[p] for p in positions]
        greedy_gem, margin_gem = greedy(model, reduced, GREEDY_TOKENS)
        if boundary > 1e-3 and min(margin_full, margin_gem) > MIN_MARGIN:
            break
    else:
        raise SystemExit(f"{name}: no init seed gave clear greedy choices")
    with torch.no_grad():
        last_logits = model(torch.tensor([ids])).logits[0, -1].tolist()
    extra = {}
    if "window_check" in spec:
        # The sliding window must change the output, or the fixture proves nothing about it.
        unwindowed = AutoConfig.from_pretrained(folder)
        unwindowed.sliding_window = None
        plain = model_class(unwindowed).eval()
        plain.load_state_dict(model.state_dict())
        with torch.no_grad():
            plain_logits = plain(torch.tensor([ids])).logits[0, -1]
        change = float((plain_logits - torch.tensor(last_logits)).abs().max())
        assert change > 0.1, f"{name}: the sliding window barely changes the logits ({change})"
        extra["logits_change_without_window"] = change
    if "short_prompt_sentences" in spec:
        short = " ".join(corpus(spec["seed"] + 2, spec["short_prompt_sentences"]))
        short_ids = tokenizer(short)["input_ids"]
        assert len(short_ids) <= spec["extra_fields"]["original_max_position_embeddings"], len(short_ids)
        assert len(ids) > spec["extra_fields"]["original_max_position_embeddings"], len(ids)
        with torch.no_grad():
            short_logits = model(torch.tensor([short_ids])).logits[0, -1].tolist()
        extra["short_prompt"] = {"prompt": short, "ids": short_ids, "last_logits": short_logits}

    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "  Where is the copper lantern?  "},
    ]
    chat_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    chat_ids = tokenizer(chat_text, add_special_tokens=False)["input_ids"]

    reference = {
        "generator": "scripts/reference/make_fixtures.py",
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "init_seed": init_seed,
        "prompt": prompt,
        "prompt_ids": ids,
        "eos_token_ids": eos_ids,
        "last_logits": last_logits,
        "gemfilter": {
            "filter_layer": layer,
            "top_k": top_k,
            "positions": positions,
            "pooled_scores": pooled,
            "boundary_margin": boundary,
        },
        "greedy_full": greedy_full,
        "greedy_full_min_margin": margin_full,
        "greedy_gemfilter": greedy_gem,
        "greedy_gemfilter_min_margin": margin_gem,
        "chat": {"messages": messages, "text": chat_text, "ids": chat_ids},
        **extra,
    }
    (folder / "reference.json").write_text(json.dumps(reference) + "\n")
    size = sum(f.stat().st_size for f in folder.iterdir())
    print(f"{name}: n={len(ids)} vocab={vocab_size} kept={len(positions)} margins full={margin_full:.3f} "
          f"gem={margin_gem:.3f} boundary={boundary:.4f} size={size / 1e6:.2f} MB")


TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
MISTRAL_SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
PHI3_SPECIALS = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>", "<|system|>", "<|endoftext|>"]
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|' + message['role'] + '|>' + '\n' + message['content'] + '<|end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>"]
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

SPECS = [
    {
        # Grouped-query attention (2 query heads per KV head), separate LM head, BOS added.
        "name": "llama-gqa", "seed": 11, "vocab_size": 320, "specials": LLAMA3_SPECIALS,
        "bos": "<|begin_of_text|>", "eos": ["<|eot_id|>"], "add_bos": True, "eos_as_int": True,
        "chat_template": LLAMA3_CHAT_TEMPLATE,
        "hidden_size": 64, "intermediate_size": 160, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "tied": False, "dtype": "float32",
        "rope_fields": {"rope_theta": 10000.0, "rope_scaling": None},
        "prompt_sentences": 3, "filter_layer": 2, "top_k": 24,
    },
    {
        # Tied embeddings, 3 query heads per KV head, no BOS (SmolLM2-style ChatML), f16 weights,
        # legacy `rope_scaling.type` = linear.
        "name": "llama-tied", "seed": 23, "vocab_size": 300, "specials": CHATML_SPECIALS,
        "bos": "<|im_start|>", "eos": ["<|im_end|>", "<|endoftext|>"], "add_bos": False, "eos_as_int": False,
        "chat_template": CHATML_TEMPLATE,
        "hidden_size": 48, "intermediate_size": 128, "num_layers": 3, "num_heads": 6, "num_kv_heads": 2,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "tied": True, "dtype": "float16",
        "rope_fields": {"rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 2.0}},
        "prompt_sentences": 3, "filter_layer": 1, "top_k": 20,
    },
    {
        # LLaMA-3.1 rope scaling with the prompt (≈100 tokens) longer than its original context (32).
        "name": "llama3-rope", "seed": 37, "vocab_size": 320, "specials": LLAMA3_SPECIALS,
        "bos": "<|begin_of_text|>", "eos": ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"], "add_bos": True, "eos_as_int": False,
        "chat_template": LLAMA3_CHAT_TEMPLATE,
        "hidden_size": 64, "intermediate_size": 128, "num_layers": 4, "num_heads": 4, "num_kv_heads": 1,
        "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "tied": False, "dtype": "float32",
        "rope_fields": {"rope_theta": 10000.0, "rope_scaling": {
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32}},
        "prompt_sentences": 4, "filter_layer": 1, "top_k": 32,
    },
    {
        # head_dim (32) ≠ hidden / heads (16), bf16 weights in two shards, transformers-5 style
        # `rope_parameters`.
        "name": "llama-headdim", "seed": 41, "vocab_size": 300, "specials": LLAMA3_SPECIALS,
        "bos": "<|begin_of_text|>", "eos": ["<|eot_id|>"], "add_bos": True, "eos_as_int": True,
        "chat_template": LLAMA3_CHAT_TEMPLATE, "head_dim": 32, "shards": 2,
        "hidden_size": 64, "intermediate_size": 128, "num_layers": 3, "num_heads": 4, "num_kv_heads": 2,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "tied": False, "dtype": "bfloat16",
        "rope_fields": {"rope_parameters": {"rope_type": "default", "rope_theta": 20000.0}},
        "prompt_sentences": 3, "filter_layer": 1, "top_k": 16,
    },
    {
        # Mistral with a sliding window (24) far shorter than the prompt, which must change the
        # output; head_dim (24) ≠ hidden / heads (16); tekken-style pre-tokenizer split.
        "name": "mistral-window", "model_type": "mistral", "seed": 53, "vocab_size": 320,
        "specials": MISTRAL_SPECIALS, "split": TEKKEN_SPLIT,
        "bos": "<s>", "eos": ["</s>"], "add_bos": True, "eos_as_int": True,
        "chat_template": MISTRAL_CHAT_TEMPLATE, "head_dim": 24,
        "hidden_size": 64, "intermediate_size": 128, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "tied": False, "dtype": "float32",
        "rope_fields": {"rope_theta": 1000000.0}, "extra_fields": {"sliding_window": 24},
        "window_check": True,
        "prompt_sentences": 3, "filter_layer": 2, "top_k": 20,
    },
    {
        # Phi-3 with longrope (published `type` key; transformers 5.24 cannot read `su`), the prompt (> 64 tokens) longer than
        # original_max_position_embeddings (64) so the long factors apply, a short prompt that
        # stays on the short factors, partial rotary (0.75) and a sliding window.
        "name": "phi3-longrope", "model_type": "phi3", "seed": 67, "vocab_size": 320,
        "specials": PHI3_SPECIALS,
        "bos": "<s>", "eos": ["<|end|>", "<|endoftext|>"], "add_bos": False, "eos_as_int": False,
        "chat_template": PHI3_CHAT_TEMPLATE,
        "hidden_size": 64, "intermediate_size": 128, "num_layers": 4, "num_heads": 4, "num_kv_heads": 4,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "tied": False, "dtype": "float32",
        "rope_fields": {"rope_theta": 10000.0, "rope_scaling": {
            "type": "longrope",
            "short_factor": [1.0, 1.1, 1.3, 1.7, 2.2, 3.0],
            "long_factor": [1.0, 1.6, 3.5, 8.0, 15.0, 26.0]}},
        "extra_fields": {"original_max_position_embeddings": 64, "partial_rotary_factor": 0.75, "pad_token_id": 0,
                         "sliding_window": 96},
        "short_prompt_sentences": 1,
        "prompt_sentences": 4, "filter_layer": 2, "top_k": 24,
    },
]


if __name__ == "__main__":
    import sys

    torch.set_num_threads(2)
    wanted = set(sys.argv[1:])
    for spec in SPECS:
        if not wanted or spec["name"] in wanted:
            build(spec)
