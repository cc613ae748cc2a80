"""Quantize+pack and unpack+dequantize in one call, on the fastest path available for the tensor's device.

Paths (``backend``):
- ``reference``: plain torch ops from :mod:`.quantizer` and :mod:`.packing`; any device, several full-size
  temporaries. The definition the others are tested against.
- ``numba``: one fused pass on CPU tensors (:mod:`._numba_kernels`), used automatically when numba imports.
- ``triton``: one fused kernel on CUDA tensors (:mod:`._triton_kernels`), used automatically when triton imports.

``auto`` picks the fast path for the device and falls back to ``reference`` when it is unavailable. The
environment variable ``QTD_COMPRESS_BACKEND=reference`` forces the reference path everywhere (for debugging).
All paths give bit-identical codes and values for the same key.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from .packing import pack_bits, packed_nbytes, unpack_bits
from .quantizer import Grid, check_quantized_bits, dequantize_codes, flat_float32, quantization_grid, quantize_with_grid

BACKENDS = ("auto", "reference", "numba", "triton")
REFERENCE_CHUNK = 1 << 20  # elements per reference step (a multiple of 8): bounds the temporaries' memory


def _numba_available() -> bool:
    try:
        from . import _numba_kernels
    except ImportError:
        return False
    return _numba_kernels.AVAILABLE


def _triton_available() -> bool:
    try:
        from . import _triton_kernels
    except ImportError:
        return False
    return _triton_kernels.AVAILABLE


def select_backend(device: torch.device, backend: str = "auto") -> str:
    """The path that will run for a tensor on ``device``; an explicit, unavailable choice is an error."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = os.environ.get("QTD_COMPRESS_BACKEND", "auto")
        if backend not in BACKENDS:
            raise ValueError(f"QTD_COMPRESS_BACKEND={backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if device.type == "cpu" and _numba_available():
            return "numba"
        if device.type == "cuda" and _triton_available():
            return "triton"
        return "reference"
    if backend == "numba" and not (device.type == "cpu" and _numba_available()):
        raise ValueError(f"the numba path needs numba installed and a CPU tensor (got a {device.type} tensor)")
    if backend == "triton" and not (device.type == "cuda" and _triton_available()):
        raise ValueError(f"the triton path needs triton installed and a CUDA tensor (got a {device.type} tensor)")
    return backend


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
    path = select_backend(flat.device, backend)
    if path == "numba":
        from ._numba_kernels import quantize_pack_cpu

        return packed, quantize_pack_cpu(flat, bits, key, packed)
    if path == "triton":
        from ._triton_kernels import quantize_pack_cuda

        return packed, quantize_pack_cuda(flat, bits, key, packed)
    grid = quantization_grid(flat, bits)
    for start in range(0, flat.numel(), REFERENCE_CHUNK):
        codes = quantize_with_grid(flat[start:start + REFERENCE_CHUNK], grid, bits, key, start=start)
        first = start * bits // 8
        packed[first:first + packed_nbytes(codes.numel(), bits)] = pack_bits(codes, bits)
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
    path = select_backend(packed.device, backend)
    if path == "numba":
        from ._numba_kernels import unpack_dequantize_cpu

        return unpack_dequantize_cpu(packed, bits, count, offset, scale, values)
    if path == "triton":
        from ._triton_kernels import unpack_dequantize_cuda

        return unpack_dequantize_cuda(packed, bits, count, offset, scale, values)
    for start in range(0, count, REFERENCE_CHUNK):
        n = min(REFERENCE_CHUNK, count - start)
        first = start * bits // 8
        codes = unpack_bits(packed[first:first + packed_nbytes(n, bits)], bits, n)
        values[start:start + n] = dequantize_codes(codes, offset, scale)
    return values
