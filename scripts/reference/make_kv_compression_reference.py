#!/usr/bin/env python3
"""Reference outputs of the SnapKV and H2O baselines on a tiny fixture.

Run once after make_fixtures.py, with the pinned versions of requirements.txt:

    .venv-ref/bin/python scripts/reference/make_kv_compression_reference.py

Writes tests/fixtures/<fixture>/kv_compression.json. An independent implementation of each
method, written from the reference code's behaviour, runs inside transformers' own LLaMA forward
through a registered attention function:

- SnapKV (FasterDecoding/SnapKV `update_kv`, as vendored by GemFilter): keys/values repeated to
  the query heads, softmax of the last `window` queries (scaled, causal inside the window) over
  all keys, summed over the window for the keys before it, `avg_pool1d(kernel, padding=kernel//2)`,
  top `budget - window`, plus the window.
- H2O (GemFilter's `H2OKVCache_LayerWise` after the prompt's forward): the eager causal softmax
  summed over every query, top `budget - recent` before the recent window, plus the window.
- `*-kv` variants: the scores of query heads sharing a KV head summed (`sum_group`), one kept set
  per KV head, keys/values not repeated.

Decoding then attends over the kept entries (no mask) plus each new token, at rotary position
n, n+1, ... For each method the file holds the kept positions per layer and head, the smallest
score gap between the last kept and the first dropped position (so a tie cannot decide the test),
the first step's logits and 8 greedy tokens.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface, AutoModelForCausalLM
from transformers.masking_utils import eager_mask
from transformers.models.llama.modeling_llama import eager_attention_forward, repeat_kv

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
GREEDY_TOKENS = 8

METHODS = [
    {"name": "snapkv", "kind": "snapkv", "budget": 64, "recent": 32, "kernel": 5, "heads": "query"},
    {"name": "snapkv-kv", "kind": "snapkv", "budget": 48, "recent": 16, "kernel": 5, "heads": "kv"},
    {"name": "h2o", "kind": "h2o", "budget": 64, "recent": 32, "heads": "query"},
    {"name": "h2o-kv", "kind": "h2o", "budget": 40, "recent": 8, "heads": "kv"},
]


def sum_group(scores: torch.Tensor, groups: int) -> torch.Tensor:
    """[heads, n] -> [kv_heads, n]: sums query heads sharing a KV head."""
    heads, n = scores.shape
    return scores.reshape(heads // groups, groups, n).sum(1)


class Run:
    def __init__(self, method: dict):
        self.method = method
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.kept: dict[int, list[list[int]]] = {}
        self.margin = math.inf

    def scores(self, module, query, key, attn_weights) -> torch.Tensor:
        """Per-head scores of the positions before the recent window ([heads or kv_heads, n - recent])."""
        m = self.method
        n = key.shape[-2]
        recent = m["recent"]
        groups = module.num_key_value_groups
        if m["kind"] == "snapkv":
            window = recent
            k = repeat_kv(key, groups)
            w = torch.matmul(query[..., -window:, :], k.transpose(2, 3)) / math.sqrt(query.shape[-1])
            mask = torch.full((window, window), torch.finfo(w.dtype).min)
            cond = torch.arange(window)
            mask.masked_fill_(cond < (cond + 1).view(window, 1), 0)
            w[:, :, -window:, -window:] += mask[None, None]
            w = F.softmax(w, dim=-1, dtype=torch.float32).to(query.dtype)
            votes = w[:, :, -window:, :-window].sum(dim=-2)[0]  # [heads, n - window]
            if m["heads"] == "kv":
                votes = sum_group(votes, groups)
            return F.avg_pool1d(votes[None], kernel_size=m["kernel"], padding=m["kernel"] // 2, stride=1)[0]
        hh = attn_weights.sum(0).sum(1)  # [heads, n]: every query's softmax, summed
        if m["heads"] == "kv":
            hh = sum_group(hh, groups)
        return hh[:, : n - recent]

    def attention(self, module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        layer = module.layer_idx
        m = self.method
        groups = module.num_key_value_groups
        if query.shape[-2] > 1:  # the prompt: full attention, then compress
            output, weights = eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout)
            n = key.shape[-2]
            budget, recent = m["budget"], m["recent"]
            scores = self.scores(module, query, key, weights)
            keep = budget - recent
            ranked = torch.sort(scores, dim=-1, descending=True).values
            self.margin = min(self.margin, float((ranked[:, keep - 1] - ranked[:, keep]).min()))
            top = torch.topk(scores, keep, dim=-1).indices.sort(dim=-1).values
            recent_positions = torch.arange(n - recent, n).repeat(top.shape[0], 1)
            kept = torch.cat([top, recent_positions], dim=-1)  # [rows, budget]
            self.kept[layer] = kept.tolist()
            k, v = (key, value) if m["heads"] == "kv" else (repeat_kv(key, groups), repeat_kv(value, groups))
            index = kept[None, :, :, None].expand(1, -1, -1, k.shape[-1])
            self.cache[layer] = (k.gather(2, index), v.gather(2, index))
            return output, weights
        # A decode step: the kept entries plus every token since, all visible.
        new_k, new_v = key[:, :, -1:], value[:, :, -1:]
        if m["heads"] == "query":
            new_k, new_v = repeat_kv(new_k, groups), repeat_kv(new_v, groups)
        k, v = self.cache[layer]
        k, v = torch.cat([k, new_k], dim=2), torch.cat([v, new_v], dim=2)
        self.cache[layer] = (k, v)
        if m["heads"] == "kv":
            k, v = repeat_kv(k, groups), repeat_kv(v, groups)
        weights = F.softmax(torch.matmul(query, k.transpose(2, 3)) * scaling, dim=-1, dtype=torch.float32)
        output = torch.matmul(weights.to(query.dtype), v).transpose(1, 2).contiguous()
        return output, weights


def run_method(folder: Path, ids: list[int], method: dict) -> dict:
    run = Run(method)
    AttentionInterface.register("kv_reference", run.attention)
    # A registered attention function gets no mask unless one is registered under its name too.
    AttentionMaskInterface.register("kv_reference", eager_mask)
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32, attn_implementation="kv_reference")
    model.eval()
    n = len(ids)
    tokens, first_logits, min_gap = [], None, math.inf
    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=True)
        past, logits = out.past_key_values, out.logits[0, -1]
        # The prompt's forward is plain causal attention: its logits are the fixture's.
        expected = torch.tensor(json.loads((folder / "reference.json").read_text())["last_logits"])
        assert float((logits - expected).abs().max()) < 1e-4, "the prompt's forward is not causal attention"
        for step in range(GREEDY_TOKENS):
            top = torch.topk(logits, 2).values
            min_gap = min(min_gap, float(top[0] - top[1]))
            token = int(torch.argmax(logits))
            tokens.append(token)
            out = model(torch.tensor([[token]]), position_ids=torch.tensor([[n + step]]), past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits[0, -1]
            if first_logits is None:
                first_logits = logits.tolist()
    layers = [run.kept[layer] for layer in sorted(run.kept)]
    return {
        **method,
        "kept": layers,
        "score_margin": run.margin,
        "decode_step_logits": first_logits,
        "greedy": tokens,
        "greedy_min_margin": min_gap,
    }


def main() -> None:
    import transformers

    for fixture in ["llama-gqa"]:
        folder = FIXTURES / fixture
        reference = json.loads((folder / "reference.json").read_text())
        ids = reference["prompt_ids"]
        results = [run_method(folder, ids, method) for method in METHODS]
        for r in results:
            assert r["score_margin"] > 1e-5, f"{r['name']}: kept/dropped scores too close ({r['score_margin']})"
            print(f"{fixture} {r['name']}: margin {r['score_margin']:.2e}, greedy {r['greedy']}, min logit gap {r['greedy_min_margin']:.3f}")
        out = {
            "generator": "scripts/reference/make_kv_compression_reference.py",
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "prompt_positions": len(ids),
            "methods": results,
        }
        (folder / "kv_compression.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
