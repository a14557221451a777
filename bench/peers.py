"""Side by side with llama.cpp (and PyTorch) on the same GGUF and the same prompt files: prefill
time, decode speed and peak memory, each engine and method in a fresh process.

Called by bench/peers.sh. For each prompt file (written by `gemfilter needle --save-prompts`):
  - llama.cpp (llama-cpp-python built from source), the same GGUF, `--threads` threads, in a child
    process: tokenize the text (special tokens parsed), time `eval` of the whole prompt (the
    prefill), then `--decode` greedy tokens one `eval` at a time; the child's peak RSS;
  - ours, `gemfilter generate --prompt-file … --ignore-eos --json` under `/usr/bin/time`, full
    attention and GemFilter (k = `--top-k`), with `--weights` (default `native`): time to first token
    (selection + prefill), decode tokens/s, peak RSS;
  - PyTorch + transformers, f32 eager, the same GGUF dequantised (prefill only; `--skip-torch`).
Prints one table with the ratios of ours to llama.cpp and writes every row as JSON.
"""

import argparse
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path


def llama_child(gguf: str, prompt: str, threads: int, decode: int) -> None:
    """Runs inside a fresh process; prints one JSON line."""
    import numpy as np
    from llama_cpp import Llama

    text = Path(prompt).read_text()
    # The KV cache is sized for the prompt and the decoded tokens, as ours is.
    target = int(re.match(r"needle-(\d+)-", Path(prompt).name).group(1))
    n_ctx = (target * 11 // 10 + decode + 255) // 256 * 256
    llm = Llama(model_path=gguf, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                n_batch=512, verbose=False)
    tokens = llm.tokenize(text.encode(), add_bos=False, special=True)
    vocab = llm.n_vocab()

    def last_logits():
        return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(vocab,))

    start = time.perf_counter()
    llm.eval(tokens)
    prefill = time.perf_counter() - start
    next_token = int(np.argmax(last_logits()))
    start = time.perf_counter()
    for _ in range(decode):
        llm.eval([next_token])
        next_token = int(np.argmax(last_logits()))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"tokens": len(tokens), "prefill_s": prefill,
                      "decode_tps": decode / seconds if decode else None, "peak_rss_mib": peak}))


def run_llama(args, prompt: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--gguf", args.gguf, "--prompt", str(prompt),
         "--threads", str(args.threads), "--decode", str(args.decode)],
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_ours(args, prompt: Path, method: list[str]) -> dict:
    command = ["/usr/bin/time", "-f", "peak_rss_kib %M", args.bin, "generate", "--model", args.gguf,
               "--prompt-file", str(prompt), "--max-new-tokens", str(args.decode + 1),
               "--ignore-eos", "--weights", args.weights, "--json", *method]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    result = json.loads(out.stdout)
    peak = float(re.search(r"peak_rss_kib (\d+)", out.stderr).group(1)) / 1024.0
    t = result["timings_ms"]
    decoded = max(len(result["answer_tokens"]) - 1, 0)
    return {"tokens": result["input_tokens"], "prefill_s": (t["select"] + t["prefill"]) / 1e3,
            "decode_tps": decoded / (t["decode"] / 1e3) if t["decode"] > 0 else None,
            "peak_rss_mib": peak}


def run_torch(args, prompts: list[Path]) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(args.gguf)
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    rows = []
    for path in prompts:
        ids = tokenizer(path.read_text(), return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            start = time.perf_counter()
            model(ids, logits_to_keep=1)
            seconds = time.perf_counter() - start
        rows.append({"engine": f"PyTorch {torch.__version__} f32 eager", "prompt": path.name,
                     "tokens": ids.shape[1], "prefill_s": seconds, "decode_tps": None,
                     "peak_rss_mib": None})
        print(f"torch {path.name}: {ids.shape[1]} tokens, {seconds:.2f} s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prompt", help=argparse.SUPPRESS)
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--prompts", help="folder of needle-<tokens>-<depth>.txt")
    parser.add_argument("--bin", help="the gemfilter binary")
    parser.add_argument("--weights", default="native")
    parser.add_argument("--top-k", type=int, default=1024)
    parser.add_argument("--decode", type=int, default=32, help="decoded tokens timed per run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output")
    parser.add_argument("--skip-torch", action="store_true")
    args = parser.parse_args()
    if args.child:
        llama_child(args.gguf, args.prompt, args.threads, args.decode)
        return

    prompts = sorted(Path(args.prompts).glob("needle-*.txt"),
                     key=lambda p: int(re.match(r"needle-(\d+)-", p.name).group(1)))
    rows = []
    for path in prompts:
        for engine, run in [
            (f"llama.cpp ({args.threads} threads)", lambda: run_llama(args, path)),
            (f"gemfilter-rs full ({args.weights})", lambda: run_ours(args, path, ["--full"])),
            (f"gemfilter-rs GemFilter k={args.top_k} ({args.weights})",
             lambda: run_ours(args, path, ["--top-k", str(args.top_k)])),
        ]:
            row = {"engine": engine, "prompt": path.name, **run()}
            rows.append(row)
            print(f"{engine} {path.name}: {row['tokens']} tokens, prefill {row['prefill_s']:.2f} s, "
                  f"decode {row['decode_tps'] or 0:.1f} t/s, peak {row['peak_rss_mib']:.0f} MiB",
                  flush=True)
    if not args.skip_torch:
        rows += run_torch(args, prompts)

    print()
    header = f"{'engine':<44} {'tokens':>7} {'prefill s':>10} {'decode t/s':>11} {'peak MiB':>9}" \
             f" {'prefill ÷ llama':>16} {'decode ÷ llama':>15} {'peak ÷ llama':>13}"
    print(header)
    for path in prompts:
        llama = next(r for r in rows if r["prompt"] == path.name and r["engine"].startswith("llama"))
        for r in (r for r in rows if r["prompt"] == path.name):
            ratio = lambda key: f"{r[key] / llama[key]:.2f}" if r.get(key) and llama.get(key) else "-"
            print(f"{r['engine']:<44} {r['tokens']:>7} {r['prefill_s']:>10.2f} "
                  f"{(r['decode_tps'] or 0):>11.1f} {(r['peak_rss_mib'] or 0):>9.0f} "
                  f"{ratio('prefill_s'):>16} {ratio('decode_tps'):>15} {ratio('peak_rss_mib'):>13}")
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
