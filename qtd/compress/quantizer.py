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

import torch
from torch import Tensor

from .backend import run_path
from .grid import Grid, check_quantized_bits, dequantize_codes, flat_float32, levels, quantization_grid
from .noise import uniform_noise


@dataclass(frozen=True)
class Quantized:
    """Integer codes of one message plus the grid that maps them back: value = offset + code * scale."""

    codes: Tensor  # uint8, values 0 .. 2**bits - 1, same shape as the input
    offset: float
    scale: float
    bits: int


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


def dequantize(q: Quantized) -> Tensor:
    """The float32 values a quantized message stands for, shaped like its codes."""
    return dequantize_codes(q.codes, q.offset, q.scale)
