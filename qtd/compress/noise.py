"""Counter-based random numbers for stochastic rounding.

Element ``k`` of a stream depends only on ``(key, k)``: a 32-bit integer hash, no generator state. That makes a
run reproducible, lets any slice of a vector be quantized independently, and lets the reference (torch), CPU
(numba) and GPU (Triton) paths draw bit-identical numbers.

The element hash is two rounds of Chris Wellons' ``lowbias32`` with the 64-bit key injected before each round::

    h = lowbias32(lowbias32(k ^ key_lo) ^ key_hi)
    u = (h >> 8) * 2**-24          # 24 random bits: exactly representable in float32, u in [0, 1)

Every implementation must follow this definition bit for bit; ``tests/test_compress_noise.py`` pins known values.
"""

from __future__ import annotations

import torch
from torch import Tensor

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF
LOWBIAS_M1 = 0x7FEB352D
LOWBIAS_M2 = 0x846CA68B
UNIFORM_BITS = 24
UNIFORM_SCALE = 2.0**-UNIFORM_BITS
MAX_STREAM = 2**32  # elements per stream; the hash counter is 32 bits wide


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def noise_key(seed: int, sender: int, iteration: int) -> int:
    """Mix a run seed, the sending node and the iteration into one 64-bit stream key.

    Chained splitmix64 so that nearby triples (sender 1 vs 2, iteration t vs t+1) give unrelated keys.
    """
    key = 0
    for part in (seed, sender, iteration):
        key = _splitmix64(key ^ (int(part) & MASK64))
    return key


def split_key(key: int) -> tuple[int, int]:
    """The (low, high) 32-bit halves of a 64-bit stream key, as the kernels take them."""
    key = int(key) & MASK64
    return key & MASK32, key >> 32


def _mul32(x: Tensor, constant: int) -> Tensor:
    """(x * constant) mod 2**32 for int64 tensors holding 32-bit values, without int64 overflow."""
    low = x * (constant & 0xFFFF)
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & MASK32


def _lowbias32(x: Tensor) -> Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, LOWBIAS_M1)
    x = x ^ (x >> 15)
    x = _mul32(x, LOWBIAS_M2)
    return x ^ (x >> 16)


def hash_counter(key: int, counter: Tensor) -> Tensor:
    """The 32-bit element hash of the module docstring, for an int64 tensor of counters in [0, 2**32)."""
    key_lo, key_hi = split_key(key)
    return _lowbias32(_lowbias32(counter ^ key_lo) ^ key_hi)


def uniform_noise(key: int, count: int, device: torch.device | str | None = None, start: int = 0) -> Tensor:
    """float32 numbers in [0, 1): element k is a pure function of (key, start + k).

    ``start`` lets a caller draw a slice of a longer stream (the fast kernels work chunk by chunk).
    """
    if count < 0 or start < 0 or start + count > MAX_STREAM:
        raise ValueError(f"a noise stream holds elements 0..{MAX_STREAM - 1}; asked for {start}..{start + count - 1}")
    counter = torch.arange(start, start + count, dtype=torch.int64, device=device)
    return (hash_counter(key, counter) >> (32 - UNIFORM_BITS)).to(torch.float32) * UNIFORM_SCALE
