"""The paper's unbiased stochastic uniform quantizer (Reisizadeh et al. 2019, eq. 7; README: "Quantizer").

The grid has ``2**bits`` levels ``offset + k * scale``, k = 0..2**bits - 1, spanning [min(x), max(x)] of the
message itself, so no value is ever clipped. With ``t = (x - offset) / scale``, ``Q`` rounds ``t`` up with
probability ``frac(t)`` and down otherwise, using the counter-based stream of :mod:`.noise`:
``code = floor(t) + (u < t - floor(t))``. ``t - floor(t)`` is exact in float32 and u has 24 random bits, so
the probability of rounding up is exactly ``frac(t)`` for t >= 1 (within 2**-24 below that), and
``E[Q(x)] = x`` up to the float32 rounding of t itself (about 1e-7 of the message's range, far below a grid
step). A constant message has scale 0 and comes back exactly.

The torch code in this module is the reference definition; all arithmetic is float32 in a fixed order, which the
fast paths (``_numba_kernels``, ``_triton_kernels``) copy bit for bit. :func:`quantize` runs the fast path for
the tensor's device by default (see :mod:`.backend`).
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


MAX_RANGE = 2.0**127  # max - min must stay below this, so that no code * scale can overflow float32


def grid_from_range(low: float, high: float, bits: int) -> Grid:
    """The grid spanning [low, high] with 2**bits levels, in float32.

    The scale is rounded up if needed so that the top level ``offset + levels * scale`` is not below ``high``:
    then only float32 rounding of ``t`` can push it past the top code, which the quantizer clamps. It is at
    least the smallest normal float32, so that ``1 / scale`` is finite for subnormal ranges.
    """
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"cannot quantize a tensor holding non-finite values (min {low}, max {high})")
    if float(high) - float(low) >= MAX_RANGE:
        raise ValueError(f"cannot quantize: the range {low}..{high} is too wide for float32 (max - min >= 2**127)")
    offset = np.float32(low)
    if high == low:
        return Grid(float(offset), 0.0, 0.0)
    scale = np.float32((float(high) - float(low)) / levels(bits))
    if float(offset) + levels(bits) * float(scale) < float(high):
        scale = np.nextafter(scale, np.float32(np.inf))
    scale = max(scale, np.finfo(np.float32).tiny)
    return Grid(float(offset), float(scale), float(np.float32(1.0) / scale))


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


def quantize(x: Tensor, bits: int, key: int, *, backend: str = "auto") -> Quantized:
    """Unbiased stochastic rounding of x onto its own min/max grid with 2**bits levels (bits in 1..8).

    ``key`` selects the random stream (see :func:`.noise.noise_key`); the same key gives the same codes on
    every path and device. ``backend`` picks the implementation (see :mod:`.backend`).
    """
    from .backend import run_path

    check_quantized_bits(bits)
    flat = flat_float32(x)
    grid = quantization_grid(flat, bits)

    def numba() -> Tensor:
        from ._numba_kernels import quantize_codes_cpu

        return quantize_codes_cpu(flat, grid, bits, key, torch.empty(flat.numel(), dtype=torch.uint8))

    def triton() -> Tensor:
        from ._triton_kernels import quantize_codes_triton

        return quantize_codes_triton(flat, grid, bits, key, torch.empty_like(flat, dtype=torch.uint8))

    codes = run_path(flat.device, backend, {"numba": numba, "triton": triton},
                     lambda: quantize_with_grid(flat, grid, bits, key))
    return Quantized(codes.reshape(x.shape), grid.offset, grid.scale, bits)


def dequantize_codes(codes: Tensor, offset: float, scale: float) -> Tensor:
    """offset + code * scale in float32 (multiply, then add: the order every path uses)."""
    return codes.to(torch.float32) * scale + offset


def dequantize(q: Quantized) -> Tensor:
    """The float32 values a quantized message stands for, shaped like its codes."""
    return dequantize_codes(q.codes, q.offset, q.scale)
