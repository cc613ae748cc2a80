"""A message's quantization grid: ``2**bits`` levels ``offset + k * scale`` spanning its own min and max.

Pure float32 arithmetic shared by the reference quantizer (:mod:`.quantizer`) and the fused kernels
(``_numba_kernels``, ``_triton_kernels``), which import it and nothing else of the quantizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DivergedError
from ..formats import QUANTIZED_BITS
from .noise import MAX_STREAM


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
        raise DivergedError(f"cannot quantize a tensor holding non-finite values (min {low}, max {high})")
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


def dequantize_codes(codes: Tensor, offset: float, scale: float) -> Tensor:
    """offset + code * scale in float32 (multiply, then add: the order every path uses)."""
    return codes.to(torch.float32) * scale + offset
