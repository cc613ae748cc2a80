"""Quantize+pack and unpack+dequantize in one call, on the fastest path for the tensor's device.

These are what :func:`.wire.encode_message` and :func:`.wire.decode_message` run. See :mod:`.backend` for the
paths; the fast ones are one pass over the data, the reference one chunks its torch temporaries.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backend import run_path, select_backend
from .blocks import (BlockGrids, block_grids, check_block_size, dequantize_blocks_reference, grids_from_ranges,
                     quantize_blocks_reference)
from .packing import pack_bits, packed_nbytes, unpack_bits
from .grid import Grid, check_quantized_bits, dequantize_codes, flat_float32, quantization_grid
from .quantizer import quantize_with_grid

REFERENCE_CHUNK = 1 << 20  # elements per reference step (a multiple of 8): bounds the temporaries' memory


def _output(out: Tensor | None, count: int, dtype: torch.dtype, device: torch.device, what: str) -> Tensor:
    if out is None:
        return torch.empty(count, dtype=dtype, device=device)
    if out.dtype != dtype or out.numel() != count or out.device != device or not out.is_contiguous():
        raise ValueError(
            f"out for {what} must be a contiguous {dtype} tensor of {count} elements on {device}, "
            f"got {out.dtype} with {out.numel()} elements on {out.device}"
        )
    return out.reshape(-1)


def quantize_pack(
    x: Tensor, bits: int, key: int, out: Tensor | None = None, backend: str = "auto"
) -> tuple[Tensor, Grid]:
    """Stochastically quantize x (flattened) to ``bits`` and bit-pack the codes.

    Returns the packed stream (``out`` when given: uint8, ``ceil(n*bits/8)`` bytes) and the grid to put in
    the message header.
    """
    check_quantized_bits(bits)
    flat = flat_float32(x)
    packed = _output(out, packed_nbytes(flat.numel(), bits), torch.uint8, flat.device, "the packed codes")
    grid = quantization_grid(flat, bits)  # the same for every path; a bad input raises here, not in a kernel

    def reference() -> None:
        for start in range(0, flat.numel(), REFERENCE_CHUNK):
            codes = quantize_with_grid(flat[start:start + REFERENCE_CHUNK], grid, bits, key, start=start)
            first = start * bits // 8
            packed[first:first + packed_nbytes(codes.numel(), bits)] = pack_bits(codes, bits, backend="reference")

    def numba() -> None:
        from ._numba_kernels import quantize_pack_cpu

        quantize_pack_cpu(flat, grid, bits, key, packed)

    def triton() -> None:
        from ._triton_kernels import quantize_pack_triton

        quantize_pack_triton(flat, grid, bits, key, packed)

    run_path(flat.device, backend, {"numba": numba, "triton": triton}, reference)
    return packed, grid


def unpack_dequantize(
    packed: Tensor,
    bits: int,
    count: int,
    offset: float,
    scale: float,
    out: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """The ``count`` float32 values ``offset + code * scale`` of a packed stream (``out`` when given)."""
    check_quantized_bits(bits)
    values = _output(out, count, torch.float32, packed.device, "the decoded values")

    def reference() -> Tensor:
        for start in range(0, count, REFERENCE_CHUNK):
            n = min(REFERENCE_CHUNK, count - start)
            first = start * bits // 8
            codes = unpack_bits(packed[first:first + packed_nbytes(n, bits)], bits, n, backend="reference")
            values[start:start + n] = dequantize_codes(codes, offset, scale)
        return values

    def numba() -> Tensor:
        from ._numba_kernels import unpack_dequantize_cpu

        return unpack_dequantize_cpu(packed, bits, count, offset, scale, values)

    def triton() -> Tensor:
        from ._triton_kernels import unpack_dequantize_triton

        return unpack_dequantize_triton(packed, bits, count, offset, scale, values)

    return run_path(packed.device, backend, {"numba": numba, "triton": triton}, reference)


def quantize_pack_blocks(
    x: Tensor, bits: int, key: int, block_size: int, out: Tensor | None = None, backend: str = "auto"
) -> tuple[Tensor, BlockGrids]:
    """:func:`quantize_pack` with one grid per block of ``block_size`` elements (see :mod:`.blocks`).

    Returns the packed stream (the same layout and size as one grid's) and the blocks' grids.
    """
    check_quantized_bits(bits)
    check_block_size(block_size)
    flat = flat_float32(x)
    packed = _output(out, packed_nbytes(flat.numel(), bits), torch.uint8, flat.device, "the packed codes")
    if select_backend(flat.device, backend) == "numba":  # the same ranges, in one pass instead of torch's
        from ._numba_kernels import block_ranges_cpu

        grids = grids_from_ranges(*block_ranges_cpu(flat, block_size), bits, block_size)
    else:
        grids = block_grids(flat, bits, block_size)

    def reference() -> None:
        step = REFERENCE_CHUNK
        for start in range(0, flat.numel(), step):
            codes = quantize_blocks_reference(flat[start:start + step], grids, bits, key, start=start)
            first = start * bits // 8
            packed[first:first + packed_nbytes(codes.numel(), bits)] = pack_bits(codes, bits, backend="reference")

    def numba() -> None:
        from ._numba_kernels import quantize_pack_blocks_cpu

        quantize_pack_blocks_cpu(flat, grids, bits, key, packed)

    def triton() -> None:
        from ._triton_kernels import quantize_pack_blocks_triton

        quantize_pack_blocks_triton(flat, grids, bits, key, packed)

    run_path(flat.device, backend, {"numba": numba, "triton": triton}, reference)
    return packed, grids


def unpack_dequantize_blocks(
    packed: Tensor,
    bits: int,
    count: int,
    offsets: Tensor,
    scales: Tensor,
    block_size: int,
    out: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """The ``count`` float32 values ``offset_b + code * scale_b`` of a block-wise packed stream."""
    check_quantized_bits(bits)
    check_block_size(block_size)
    values = _output(out, count, torch.float32, packed.device, "the decoded values")

    def reference() -> Tensor:
        for start in range(0, count, REFERENCE_CHUNK):
            n = min(REFERENCE_CHUNK, count - start)
            first = start * bits // 8
            codes = unpack_bits(packed[first:first + packed_nbytes(n, bits)], bits, n, backend="reference")
            values[start:start + n] = dequantize_blocks_reference(codes, offsets, scales, block_size, start=start)
        return values

    def numba() -> Tensor:
        from ._numba_kernels import unpack_dequantize_blocks_cpu

        return unpack_dequantize_blocks_cpu(packed, bits, offsets, scales, block_size, values)

    def triton() -> Tensor:
        from ._triton_kernels import unpack_dequantize_blocks_triton

        return unpack_dequantize_blocks_triton(packed, bits, count, offsets, scales, block_size, values)

    return run_path(packed.device, backend, {"numba": numba, "triton": triton}, reference)
