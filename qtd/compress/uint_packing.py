"""Bit packing of unsigned integers of any width from 1 to 56 bits (e.g. TopK indices in ceil(log2 p) bits).

Layout: value i occupies stream bits ``i*bits .. i*bits + bits - 1``, least significant bit first, where
stream bit j is bit ``j % 8`` of byte ``j // 8`` (the same convention as :mod:`.packing` for 1..8 bits).
The stream is ``ceil(count * bits / 8)`` bytes; unused high bits of the last byte are zero.

A value starting at bit offset o touches the bytes ``o // 8 .. (o % 8 + bits - 1) // 8`` after it; each of
those bytes receives one shifted slice of the value. Slices of different values never overlap, so adding
them (``index_add_``) is the same as or-ing them, and the whole stream is built with a few vector ops.
"""

from __future__ import annotations

import torch
from torch import Tensor

MAX_UINT_BITS = 56  # a value shifted by up to 7 bits must stay below 2**63


def index_bits(numel: int) -> int:
    """Bits needed to address ``numel`` positions: ceil(log2 numel), at least 1."""
    if numel < 1:
        raise ValueError(f"numel must be >= 1, got {numel}")
    return max(1, (numel - 1).bit_length())


def uint_nbytes(count: int, bits: int) -> int:
    """ceil(count * bits / 8)."""
    return (count * bits + 7) // 8


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_UINT_BITS:
        raise ValueError(f"bits={bits!r} must be an integer in 1..{MAX_UINT_BITS}")


def _spans(count: int, bits: int, device: torch.device) -> tuple[Tensor, Tensor, int]:
    offsets = torch.arange(count, dtype=torch.int64, device=device) * bits
    span = (bits + 7 + 7) // 8  # bytes one value can touch once shifted by up to 7 bits
    return offsets // 8, offsets % 8, span


def pack_uints(values: Tensor, bits: int) -> Tensor:
    """Pack non-negative integers (each < 2**bits) into ``ceil(n*bits/8)`` bytes (uint8, same device)."""
    _check_bits(bits)
    if values.dtype.is_floating_point or values.dtype == torch.bool:
        raise TypeError(f"values must be an integer tensor, got {values.dtype}")
    flat = values.reshape(-1).to(torch.int64)
    count = flat.numel()
    nbytes = uint_nbytes(count, bits)
    if count == 0:
        return torch.zeros(0, dtype=torch.uint8, device=values.device)
    if int(flat.min()) < 0 or int(flat.max()) >> bits:
        raise ValueError(f"values must be in 0..{2**bits - 1} to fit in {bits} bits, "
                         f"got min {int(flat.min())}, max {int(flat.max())}")
    first, shift, span = _spans(count, bits, flat.device)
    shifted = flat << shift
    stream = torch.zeros(nbytes + span, dtype=torch.int64, device=flat.device)
    for byte in range(span):
        stream.index_add_(0, first + byte, (shifted >> (8 * byte)) & 0xFF)
    return stream[:nbytes].to(torch.uint8)


def unpack_uints(packed: Tensor, bits: int, count: int) -> Tensor:
    """The ``count`` int64 values stored in a stream made by :func:`pack_uints`."""
    _check_bits(bits)
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be a uint8 tensor, got {packed.dtype}")
    flat = packed.reshape(-1)
    nbytes = uint_nbytes(count, bits)
    if flat.numel() != nbytes:
        raise ValueError(f"{count} values of {bits} bits take {nbytes} bytes, got {flat.numel()}")
    if count == 0:
        return torch.zeros(0, dtype=torch.int64, device=packed.device)
    first, shift, span = _spans(count, bits, flat.device)
    stream = torch.zeros(nbytes + span, dtype=torch.int64, device=flat.device)
    stream[:nbytes] = flat
    word = torch.zeros(count, dtype=torch.int64, device=flat.device)
    for byte in range(span):
        word |= stream[first + byte] << (8 * byte)
    return (word >> shift) & ((1 << bits) - 1)
