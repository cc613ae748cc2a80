"""The paper's unbiased stochastic uniform quantizer (DESIGN.md section 1, eq. 7), reference implementation.

The grid has ``2**bits`` levels ``offset + k * scale``, k = 0..2**bits - 1, spanning [min(x), max(x)] of the
message itself, so no value is ever clipped and ``E[Q(x)] = x``. With ``t = (x - offset) / scale``, ``Q`` rounds
``t`` up with probability ``frac(t)`` and down otherwise, using the counter-based stream of :mod:`.noise`:
``code = floor(t) + (u < t - floor(t))``. ``t - floor(t)`` is exact in float32 and u has 24 random bits, so the
rounding probability equals ``frac(t)`` exactly for t >= 1 (within 2**-24 below that). All arithmetic is float32
in a fixed order, which the fast paths (``_numba_kernels``, ``_triton_kernels``) copy bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..config.schema import QUANTIZED_BITS
from ..errors import ConfigError
from .noise import MAX_STREAM, uniform_noise


@dataclass(frozen=True)
class Quantized:
    """Integer codes of one message plus the grid that maps them back: value = offset + code * scale."""

    codes: Tensor  # uint8, values 0 .. 2**bits - 1, same shape as the input
    offset: float
    scale: float
    bits: int


@dataclass(frozen=True)
class Grid:
    """A message's quantization grid; every field is a float32 value held in a Python float."""

    offset: float
    scale: float
    inv_scale: float  # float32(1 / scale), 0 for a constant message


def check_quantized_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in QUANTIZED_BITS:
        raise ConfigError(f"bits={bits!r} cannot be quantized: use 1..8 (16 and 32 are sent unquantized)")


def levels(bits: int) -> int:
    """The largest code, 2**bits - 1."""
    return (1 << bits) - 1


def grid_from_range(low: float, high: float, bits: int) -> Grid:
    """The grid spanning [low, high] with 2**bits levels, in float32.

    The scale is rounded up if needed so that the top level ``offset + levels * scale`` is not below ``high``:
    then only float32 rounding of ``t`` can push it past the top code, which the quantizer clamps.
    """
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"cannot quantize a tensor holding non-finite values (min {low}, max {high})")
    offset = np.float32(low)
    with np.errstate(over="ignore"):
        scale = np.float32((float(high) - float(low)) / levels(bits))
        if float(offset) + levels(bits) * float(scale) < float(high):
            scale = np.nextafter(scale, np.float32(np.inf))
    if not np.isfinite(scale):
        raise ValueError(f"cannot quantize: the range {low}..{high} overflows a float32 grid step at {bits} bits")
    inv_scale = np.float32(1.0) / scale if scale > 0 else np.float32(0.0)
    return Grid(float(offset), float(scale), float(inv_scale))


def quantization_grid(x: Tensor, bits: int) -> Grid:
    """The grid of one message from its min and max (one pass over x)."""
    if x.numel() == 0:
        return Grid(0.0, 0.0, 0.0)
    low, high = torch.aminmax(x)
    return grid_from_range(low.item(), high.item(), bits)


def flat_float32(x: Tensor) -> Tensor:
    """x as a contiguous 1-D float32 tensor (no copy when it already is one)."""
    if x.numel() >= MAX_STREAM:
        raise ValueError(f"a message holds at most {MAX_STREAM - 1} elements, got {x.numel()}")
    return x.detach().reshape(-1).to(torch.float32).contiguous()


def quantize_with_grid(x: Tensor, grid: Grid, bits: int, key: int, start: int = 0) -> Tensor:
    """Reference stochastic rounding of a flat float32 tensor onto ``grid``: uint8 codes.

    ``x`` may be the slice of a message beginning at element ``start``; it then draws that slice's noise.
    """
    u = uniform_noise(key, x.numel(), device=x.device, start=start)
    t = (x - grid.offset) * grid.inv_scale
    down = torch.floor(t)
    codes = down + (u < t - down).to(torch.float32)
    return codes.clamp_(max=levels(bits)).to(torch.uint8)


def quantize(x: Tensor, bits: int, key: int) -> Quantized:
    """Unbiased stochastic rounding of x onto its own min/max grid with 2**bits levels (bits in 1..8).

    ``key`` selects the random stream (see :func:`.noise.noise_key`); the same key gives the same codes on
    every path and device.
    """
    check_quantized_bits(bits)
    flat = flat_float32(x)
    grid = quantization_grid(flat, bits)
    codes = quantize_with_grid(flat, grid, bits, key)
    return Quantized(codes.reshape(x.shape), grid.offset, grid.scale, bits)


def dequantize_codes(codes: Tensor, offset: float, scale: float) -> Tensor:
    """offset + code * scale in float32 (multiply, then add: the order every path uses)."""
    return codes.to(torch.float32) * scale + offset


def dequantize(q: Quantized) -> Tensor:
    """The float32 values a quantized message stands for, shaped like its codes."""
    return dequantize_codes(q.codes, q.offset, q.scale)
