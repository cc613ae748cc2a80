"""Block-wise grids: every ``block_size`` consecutive elements of a message get their own min-max grid.

One grid per message spans the whole model's range, so a layer of small weights next to one of large
weights is rounded on steps sized for the large one. With blocks, block b (elements ``b*B .. b*B+B-1``,
the last one shorter) is quantized onto ``grid_from_range(min, max)`` of its own elements, with the same
noise stream as a one-grid message (the counter is the element's index in the whole message), so each
block is exactly a one-grid message of its elements' range. A block costs 8 more bytes on the wire (its
float32 offset and scale).

:func:`block_grids` computes all blocks' grids at once, in torch on the tensor's device, with the same
float32 arithmetic as :func:`.grid.grid_from_range` (tests check they agree for every block). The
reference quantizer and dequantizer here are the definitions the fused kernels copy bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import DivergedError
from .grid import MAX_RANGE, levels
from .noise import uniform_noise

BLOCK_ALIGN = 8  # block sizes are multiples of 8, so that every block starts on a byte at every width
MAX_BLOCK = 1 << 30


@dataclass(frozen=True)
class BlockGrids:
    """Per-block float32 grids, each a 1-D tensor of ``ceil(count / block_size)`` values."""

    block_size: int
    offsets: Tensor
    scales: Tensor
    inv_scales: Tensor  # float32(1 / scale), 0 for a constant block


def check_block_size(block_size: int) -> None:
    if (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 0
            or block_size % BLOCK_ALIGN or block_size > MAX_BLOCK):
        raise ValueError(f"block_size={block_size!r}: use 0 (one grid per message) or a positive multiple of "
                         f"{BLOCK_ALIGN} up to {MAX_BLOCK}")


def block_count(count: int, block_size: int) -> int:
    return -(-count // block_size)


def block_ranges(flat: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """Each block's min and max (float32), in one reduction over the full blocks and one over the tail."""
    full = flat.numel() // block_size
    lows = torch.empty(block_count(flat.numel(), block_size), dtype=torch.float32, device=flat.device)
    highs = torch.empty_like(lows)
    if full:
        lows[:full], highs[:full] = torch.aminmax(flat[: full * block_size].view(full, block_size), dim=1)
    if flat.numel() > full * block_size:
        lows[full], highs[full] = torch.aminmax(flat[full * block_size:])
    return lows, highs


def grids_from_ranges(lows: Tensor, highs: Tensor, bits: int, block_size: int) -> BlockGrids:
    """:func:`.grid.grid_from_range` for every block at once (float64 where it computes in Python floats)."""
    if lows.numel() and not bool(torch.isfinite(lows).all() & torch.isfinite(highs).all()):
        raise DivergedError("cannot quantize a tensor holding non-finite values")
    width = highs.double() - lows.double()
    if lows.numel() and bool((width >= MAX_RANGE).any()):
        raise ValueError("cannot quantize: a block's range is too wide for float32 (max - min >= 2**127)")
    top = levels(bits)
    scales = (width / top).float()
    short = lows.double() + top * scales.double() < highs.double()
    scales = torch.where(short, torch.nextafter(scales, torch.full_like(scales, float("inf"))), scales)
    scales = scales.clamp(min=torch.finfo(torch.float32).tiny)
    constant = highs == lows
    scales = torch.where(constant, torch.zeros_like(scales), scales)
    inv_scales = torch.where(constant, torch.zeros_like(scales), 1.0 / torch.where(constant, 1.0, scales))
    return BlockGrids(block_size, lows, scales, inv_scales)


def block_grids(flat: Tensor, bits: int, block_size: int) -> BlockGrids:
    """The grids of a flat float32 message cut into blocks of ``block_size`` elements."""
    return grids_from_ranges(*block_ranges(flat, block_size), bits, block_size)


def _per_element(values: Tensor, start: int, count: int, block_size: int) -> Tensor:
    index = torch.arange(start, start + count, device=values.device) // block_size
    return values[index]


def quantize_blocks_reference(x: Tensor, grids: BlockGrids, bits: int, key: int, start: int = 0) -> Tensor:
    """Reference stochastic rounding of ``x`` (the slice of a message from element ``start``) onto its
    blocks' grids: uint8 codes, element for element what :func:`.quantizer.quantize_with_grid` gives
    with the block's grid."""
    offset = _per_element(grids.offsets, start, x.numel(), grids.block_size)
    inv_scale = _per_element(grids.inv_scales, start, x.numel(), grids.block_size)
    u = uniform_noise(key, x.numel(), device=x.device, start=start)
    t = (x - offset) * inv_scale
    down = torch.floor(t)
    codes = down + (u < t - down).to(torch.float32)
    return codes.clamp_(max=levels(bits)).to(torch.uint8)


def dequantize_blocks_reference(codes: Tensor, offsets: Tensor, scales: Tensor, block_size: int,
                                start: int = 0) -> Tensor:
    """offset_b + code * scale_b in float32 (multiply, then add) for the codes of elements from ``start``."""
    return (codes.to(torch.float32) * _per_element(scales, start, codes.numel(), block_size)
            + _per_element(offsets, start, codes.numel(), block_size))
