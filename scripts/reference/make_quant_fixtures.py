#!/usr/bin/env python3
"""Reference vectors for the packed block formats, from the `gguf` package (llama.cpp's own Python
implementation of its formats). Needs only `gguf` and `numpy`:

    python3 -m venv /tmp/q && /tmp/q/bin/pip install gguf==0.19.0 numpy==2.4.6
    /tmp/q/bin/python scripts/reference/make_quant_fixtures.py

Writes `tests/fixtures/gguf/quant.json`:
- `quantize`: for Q8_0, Q4_0 and Q4_1, f32 rows (random normal, with edge blocks: all zero, one
  constant, one huge outlier, all negative) and the bytes `gguf.quants.quantize` packs them into —
  what `llama-quantize` writes. gemfilter-core must produce the same bytes.
- `dequantize`: Q5_0 and Q5_1 blocks of random bytes (finite f16 scale fields) and their values.
- `q4_k`: Q4_K super-blocks and their values, to check the Q4_K → Q4_1 repacking (equal up to the
  f16 rounding of each sub-block's scale and offset).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "gguf" / "quant.json"


def rows(rng: np.random.Generator) -> np.ndarray:
    """4 rows of 128 values (4 blocks each) with edge-case blocks mixed in."""
    data = rng.normal(scale=0.05, size=(4, 128)).astype(np.float32)
    data[1, 0:32] = 0.0
    data[1, 32:64] = 0.25
    data[2, 64:96] = rng.normal(scale=1e-3, size=32)
    data[2, 70] = 40.0
    data[3, 96:128] = -np.abs(data[3, 96:128]) - 0.01
    return data


def random_blocks(rng: np.random.Generator, blocks: int, block_bytes: int, halves: list[int]) -> bytes:
    raw = bytearray(rng.integers(0, 256, size=blocks * block_bytes, dtype=np.uint8).tobytes())
    for b in range(blocks):
        for at in halves:
            scale = np.float16(rng.uniform(0.001, 0.1) * rng.choice([-1, 1]))
            raw[b * block_bytes + at: b * block_bytes + at + 2] = scale.tobytes()
    return bytes(raw)


def main() -> None:
    rng = np.random.default_rng(13)
    data = rows(rng)
    out = {"generator": "scripts/reference/make_quant_fixtures.py", "rows": 4, "cols": 128,
           "values": [float(v) for v in data.reshape(-1)], "quantize": {}, "dequantize": {}}
    for name, qtype in [("Q8_0", Q.Q8_0), ("Q4_0", Q.Q4_0), ("Q4_1", Q.Q4_1)]:
        out["quantize"][name] = quantize(data, qtype).tobytes().hex()
    for name, qtype, block_bytes, halves in [("Q5_0", Q.Q5_0, 22, [0]), ("Q5_1", Q.Q5_1, 24, [0, 2])]:
        raw = random_blocks(rng, 3, block_bytes, halves)
        values = dequantize(np.frombuffer(raw, dtype=np.uint8).reshape(1, -1), qtype).reshape(-1)
        out["dequantize"][name] = {"bytes": raw.hex(), "values": [float(v) for v in values]}
    # Q4_K: scales and mins are 6-bit fields inside `scales`; d and dmin positive like real files.
    raw = bytearray(random_blocks(rng, 2, 144, []))
    for b in range(2):
        raw[b * 144: b * 144 + 2] = np.float16(rng.uniform(0.001, 0.01)).tobytes()
        raw[b * 144 + 2: b * 144 + 4] = np.float16(rng.uniform(0.001, 0.01)).tobytes()
    values = dequantize(np.frombuffer(bytes(raw), dtype=np.uint8).reshape(1, -1), Q.Q4_K).reshape(-1)
    out["q4_k"] = {"bytes": bytes(raw).hex(), "values": [float(v) for v in values]}
    OUT.write_text(json.dumps(out) + "\n")
    print(OUT, OUT.stat().st_size)


if __name__ == "__main__":
    main()
