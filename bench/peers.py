"""Prefill time of llama.cpp and PyTorch/transformers on prompt files, next to ours.

Called by bench/peers.sh. For each prompt file (written by `gemfilter needle --save-prompts`):
  - llama.cpp (llama-cpp-python built from source), the same GGUF, n_threads threads: tokenize the text
    (special tokens parsed), time `eval` of the whole prompt (the prefill), from a fresh context;
  - PyTorch + transformers, f32, eager attention, the same GGUF dequantised: time one forward with
    `logits_to_keep=1` under `torch.no_grad()`;
then prints one table with our full and GemFilter times to first token (from our needle.json) and the
ratios, and writes it as JSON.
"""

import argparse
import json
import re
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--prompts", required=True, help="folder of needle-<tokens>-<depth>.txt")
    parser.add_argument("--ours", required=True, help="our needle.json on the same prompts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", required=True)
    parser.add_argument("--skip-torch", action="store_true")
    args = parser.parse_args()

    gguf = Path(args.gguf).expanduser()
    prompts = sorted(
        Path(args.prompts).glob("needle-*.txt"),
        key=lambda p: int(re.match(r"needle-(\d+)-", p.name).group(1)),
    )
    ours = json.loads(Path(args.ours).read_text())
    our_ttft = {}
    for cell in ours["cells"]:
        key = (cell["method"], cell["target_tokens"])
        our_ttft.setdefault(key, []).append(cell["ttft_ms"] / 1e3)
    rows = []

    from llama_cpp import Llama

    longest = max(int(re.match(r"needle-(\d+)-", p.name).group(1)) for p in prompts)
    llm = Llama(
        model_path=str(gguf),
        n_ctx=longest + 512,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_batch=512,
        verbose=False,
    )
    for path in prompts:
        target = int(re.match(r"needle-(\d+)-", path.name).group(1))
        text = path.read_text()
        tokens = llm.tokenize(text.encode(), add_bos=False, special=True)
        llm.reset()
        llm._ctx.kv_cache_clear() if hasattr(llm._ctx, "kv_cache_clear") else None
        start = time.perf_counter()
        llm.eval(tokens)
        seconds = time.perf_counter() - start
        rows.append({"engine": f"llama.cpp ({args.threads} threads)", "target": target,
                     "tokens": len(tokens), "prefill_s": seconds})
        print(f"llama.cpp {target}: {len(tokens)} tokens, {seconds:.2f} s", flush=True)
    del llm

    if not args.skip_torch:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(args.threads)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager"
        ).eval()
        for path in prompts:
            target = int(re.match(r"needle-(\d+)-", path.name).group(1))
            ids = tokenizer(path.read_text(), return_tensors="pt", add_special_tokens=False).input_ids
            with torch.no_grad():
                start = time.perf_counter()
                model(ids, logits_to_keep=1)
                seconds = time.perf_counter() - start
            rows.append({"engine": f"PyTorch {torch.__version__} f32 eager ({args.threads} threads)",
                         "target": target, "tokens": ids.shape[1], "prefill_s": seconds})
            print(f"torch {target}: {ids.shape[1]} tokens, {seconds:.2f} s", flush=True)

    for method, name in [("full", "gemfilter-rs full"), ("gemfilter", "gemfilter-rs GemFilter")]:
        for (m, target), times in sorted(our_ttft.items()):
            if m == method:
                rows.append({"engine": f"{name} (TTFT)", "target": target,
                             "tokens": next(c["input_tokens"] for c in ours["cells"]
                                            if c["method"] == m and c["target_tokens"] == target),
                             "prefill_s": sum(times) / len(times)})

    def ours_for(target: int, method: str):
        times = our_ttft.get((method, target))
        return sum(times) / len(times) if times else None

    print()
    print(f"{'engine':<44} {'tokens':>7} {'prefill s':>10} {'ours full ÷ it':>15} {'ours GemFilter ÷ it':>20}")
    for row in sorted(rows, key=lambda r: (r["target"], r["engine"])):
        full, gem = ours_for(row["target"], "full"), ours_for(row["target"], "gemfilter")
        ratio = lambda x: f"{x / row['prefill_s']:.2f}" if x else "-"
        print(f"{row['engine']:<44} {row['tokens']:>7} {row['prefill_s']:>10.2f} {ratio(full):>15} {ratio(gem):>20}")
    Path(args.output).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
