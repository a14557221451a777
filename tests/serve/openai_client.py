"""The official `openai` client against `gemfilter serve` (driven by tests/serve.rs).

Checks chat and text completions, whole and streamed, the method fields through `extra_body`,
usage, and that errors surface as the client's own exception classes. Exits non-zero on the
first failed check.
"""

import argparse
import concurrent.futures
import sys
import time

import openai


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--model", required=True)
    args = parser.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, timeout=120, max_retries=0)

    models = client.models.list()
    assert [m.id for m in models.data] == [args.model], models
    print(f"models: {[m.id for m in models.data]}")

    document = " ".join(["river", "stone", "market", "lantern"] * 8)
    messages = [{"role": "user", "content": f"{document}\n\nWhich word comes first?"}]

    whole = client.chat.completions.create(
        model=args.model, messages=messages, max_tokens=12, temperature=0
    )
    text = whole.choices[0].message.content
    assert whole.object == "chat.completion"
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    print(f"chat: {text!r} usage {whole.usage}")

    stream = client.chat.completions.create(
        model=args.model,
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert "".join(pieces) == text, (pieces, text)
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens
    # The follow-up reused the document's early layers.
    assert usage.prompt_tokens_details.cached_tokens > 0, usage
    print(f"chat stream: {len(pieces)} chunks, cached {usage.prompt_tokens_details.cached_tokens}")

    for method in ("full", "snapkv", "h2o"):
        extra = {"method": method} if method == "full" else {"method": method, "budget": 48}
        answer = client.chat.completions.create(
            model=args.model, messages=messages, max_tokens=6, temperature=0, extra_body=extra
        )
        assert answer.model_extra["gemfilter"]["method"] == method, answer
        print(f"{method}: {answer.choices[0].message.content!r}")

    completion = client.completions.create(
        model=args.model, prompt=document, max_tokens=8, temperature=0.7, top_p=0.9, seed=3
    )
    again = client.completions.create(
        model=args.model, prompt=document, max_tokens=8, temperature=0.7, top_p=0.9, seed=3
    )
    assert completion.choices[0].text == again.choices[0].text, "same seed, same text"
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=args.model, prompt=document, max_tokens=8, temperature=0.7, top_p=0.9,
            seed=3, stream=True,
        )
        if c.choices
    )
    assert streamed == completion.choices[0].text, (streamed, completion.choices[0].text)
    print(f"completion: {completion.choices[0].text!r}")

    def expect(error_class, call, what):
        try:
            call()
        except error_class as error:
            print(f"{what}: {error_class.__name__} {error.status_code}")
            return error
        raise AssertionError(f"{what}: no {error_class.__name__}")

    expect(openai.NotFoundError,
           lambda: client.chat.completions.create(model="gpt-4o", messages=messages),
           "unknown model")
    expect(openai.BadRequestError,
           lambda: client.chat.completions.create(
               model=args.model, messages=messages, temperature=5),
           "bad temperature")
    error = expect(openai.BadRequestError,
                   lambda: client.completions.create(model=args.model, prompt="river " * 3000),
                   "prompt too long")
    assert error.code == "context_length_exceeded", error.code
    expect(openai.BadRequestError,
           lambda: client.chat.completions.create(
               model=args.model, messages=messages, extra_body={"method": "magic"}),
           "unknown method")
    unauthorized = openai.OpenAI(base_url=args.base_url, api_key="wrong", max_retries=0)
    expect(openai.AuthenticationError, lambda: unauthorized.models.list(), "wrong key")

    # A few concurrent clients, each request under a time limit.
    def ask(i):
        started = time.monotonic()
        answer = client.chat.completions.create(
            model=args.model,
            messages=[{"role": "user", "content": f"{document}\n\nQuestion {i}?"}],
            max_tokens=8,
            temperature=0,
            timeout=60,
        )
        return answer.usage.completion_tokens, time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(ask, range(8)))
    assert len(results) == 8
    print(f"concurrent: 8 requests, slowest {max(t for _, t in results):.2f}s")
    print("openai client: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
