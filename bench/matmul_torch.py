#!/usr/bin/env python3
"""The same f32 products `gemfilter bench --matmul-peak` times, through PyTorch (MKL/oneDNN) on 2
threads: the machine's f32 matrix-product peak as the best CPU library reaches it.

    python bench/matmul_torch.py [HIDDEN INTERMEDIATE]   # default: SmolLM2-135M's 576 1536
"""

import sys
import time

import torch

torch.set_num_threads(2)
hidden, wide = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) == 3 else (576, 1536)


def gflops(m: int, k: int, n: int) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * m * k * n / best / 1e9


print("square peak (GFLOP/s):", f"{max(gflops(s, s, s) for s in (512, 1024, 2048)):.1f}")
for tokens in (1012, 2014, 4019, 8013):
    shapes = [(hidden, hidden), (hidden, wide), (wide, hidden)]
    print("projection products (GFLOP/s):", ", ".join(f"{tokens}x{k}x{n} {gflops(tokens, k, n):.1f}" for k, n in shapes))
