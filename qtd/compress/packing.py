"""Bit packing of s-bit codes (s in 1..8) into a uint8 stream, reference implementation in torch.

Layout (the wire format's payload): code i occupies stream bits ``i*s .. i*s + s - 1``, least significant
bit first, where stream bit j is bit ``j % 8`` of byte ``j // 8``. The stream is ``ceil(n * s / 8)`` bytes and
the unused high bits of the last byte are zero. Eight codes fill exactly s bytes, so both directions work on
groups of eight codes held in one 64-bit word.

On CPU the numba kernels run by default (``backend``, see :mod:`.backend`); elsewhere these torch ops do.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backend import run_path
from .grid import check_quantized_bits


def packed_nbytes(count: int, bits: int) -> int:
    """ceil(count * bits / 8)."""
    return (count * bits + 7) // 8


def _check_uint8(name: str, t: Tensor) -> None:
    if t.dtype != torch.uint8:
        raise TypeError(f"{name} must be a uint8 tensor, got {t.dtype}")


def pack_bits(codes: Tensor, bits: int, *, backend: str = "auto") -> Tensor:
    """Pack uint8 codes (values < 2**bits; higher bits are ignored) into ``ceil(n*bits/8)`` bytes."""
    check_quantized_bits(bits)
    _check_uint8("codes", codes)
    flat = codes.reshape(-1)
    count = flat.numel()
    nbytes = packed_nbytes(count, bits)

    def numba() -> Tensor:
        from ._numba_kernels import pack_bits_cpu

        return pack_bits_cpu(flat, bits, torch.empty(nbytes, dtype=torch.uint8))

    return run_path(flat.device, backend, {"numba": numba}, lambda: _pack_reference(flat, bits))


def _pack_reference(flat: Tensor, bits: int) -> Tensor:
    count = flat.numel()
    nbytes = packed_nbytes(count, bits)
    if bits == 8:
        return flat.clone()
    groups = (count + 7) // 8
    padded = torch.zeros(groups * 8, dtype=torch.int64, device=flat.device)
    padded[:count] = flat & ((1 << bits) - 1)
    shifts = torch.arange(8, device=flat.device, dtype=torch.int64) * bits
    words = (padded.view(groups, 8) << shifts).sum(dim=1)  # fields are disjoint: sum == bitwise or
    byte_shifts = torch.arange(bits, device=flat.device, dtype=torch.int64) * 8
    stream = ((words.unsqueeze(1) >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)
    return stream[:nbytes].clone()


def unpack_bits(packed: Tensor, bits: int, count: int, *, backend: str = "auto") -> Tensor:
    """The ``count`` uint8 codes stored in a stream made by :func:`pack_bits`."""
    check_quantized_bits(bits)
    _check_uint8("packed", packed)
    flat = packed.reshape(-1)
    nbytes = packed_nbytes(count, bits)
    if flat.numel() != nbytes:
        raise ValueError(f"{count} codes of {bits} bits take {nbytes} bytes, got {flat.numel()}")

    def numba() -> Tensor:
        from ._numba_kernels import unpack_bits_cpu

        return unpack_bits_cpu(flat, bits, torch.empty(count, dtype=torch.uint8))

    return run_path(flat.device, backend, {"numba": numba}, lambda: _unpack_reference(flat, bits, count))


def _unpack_reference(flat: Tensor, bits: int, count: int) -> Tensor:
    nbytes = packed_nbytes(count, bits)
    if bits == 8:
        return flat.clone()
    groups = (count + 7) // 8
    padded = torch.zeros(groups * bits, dtype=torch.int64, device=flat.device)
    padded[:nbytes] = flat
    byte_shifts = torch.arange(bits, device=flat.device, dtype=torch.int64) * 8
    words = (padded.view(groups, bits) << byte_shifts).sum(dim=1)
    shifts = torch.arange(8, device=flat.device, dtype=torch.int64) * bits
    codes = ((words.unsqueeze(1) >> shifts) & ((1 << bits) - 1)).to(torch.uint8).reshape(-1)
    return codes[:count].clone()
