"""The wire message: a fixed 40-byte header followed by the payload, in one contiguous uint8 tensor.

Header (little-endian, ``HEADER_FORMAT``)::

    offset size field
         0    4 magic       b"QTDW"
         4    1 version     WIRE_VERSION
         5    1 bits        1..8 quantized, 16 float16, 32 float32
         6    2 reserved    0
         8    8 count       number of elements
        16    8 iteration
        24    4 sender
        28    4 offset      float32 grid offset (0 for 16/32 bits)
        32    4 scale       float32 grid step (0 for 16/32 bits)
        36    4 crc32       zlib.crc32 of bytes 0..35

Payload: for 1..8 bits the packed codes of :mod:`.packing` (``ceil(count*bits/8)`` bytes, value =
offset + code * scale); for 16 and 32 bits the raw little-endian float16 / float32 values. A receiver knows
the size in advance from :func:`message_nbytes`. The header is 8-byte aligned so the payload of a 16/32-bit
message can be viewed as floats in place.

Version 2 is a block-wise message (1..8 bits, ``block_size`` > 0, see :mod:`.blocks`): the same 40 bytes
with the block size where version 1 has its grid (``HEADER_FORMAT_V2``)::

    offset size field
        28    4 block_size  elements per grid, a multiple of 8
        32    4 reserved    0

then the blocks' grids, ``blocks = ceil(count / block_size)`` float32 offsets followed by as many float32
scales (``8 * blocks`` bytes), then the packed codes as in version 1 (block b's codes are the stream's
elements ``b*block_size`` onwards). Bytes = 40 + 8 * blocks + ceil(count * bits / 8). A one-grid message
(``block_size`` 0) is still written as version 1, which every qtd reads; a qtd that reads only version 1
refuses version 2 with the header's "unsupported wire format version" message.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError, DivergedError, WireFormatError
from ..formats import ALLOWED_BITS, QUANTIZED_BITS
from .blocks import BLOCK_ALIGN, MAX_BLOCK, block_count, check_block_size
from .fused import quantize_pack, quantize_pack_blocks, unpack_dequantize, unpack_dequantize_blocks
from .noise import MAX_STREAM, noise_key
from .packing import packed_nbytes
from .grid import flat_float32
from .header import HeaderLayout, check_expected, message_buffer

MAGIC = b"QTDW"
WIRE_VERSION = 1  # one grid per message
BLOCKED_VERSION = 2  # one grid per block
HEADER_FORMAT = "<4sBBHQQIffI"
HEADER_FORMAT_V2 = "<4sBBHQQIIII"
READS = "versions 1 and 2"
LAYOUT = HeaderLayout("message", HEADER_FORMAT, MAGIC, WIRE_VERSION, "node", READS)
LAYOUT_V2 = HeaderLayout("message", HEADER_FORMAT_V2, MAGIC, BLOCKED_VERSION, "node", READS)
HEADER_BYTES = LAYOUT.nbytes
_U32 = 2**32
_U64 = 2**64

assert HEADER_BYTES == LAYOUT_V2.nbytes == 40 and sys.byteorder == "little", "the wire format assumes a little-endian host"


@dataclass(frozen=True)
class Header:
    """What a message says about itself."""

    version: int
    bits: int
    count: int
    offset: float
    scale: float
    sender: int
    iteration: int
    block_size: int = 0  # version 2: elements per grid (offset and scale are then 0 here: the grids follow)


def _check_bits(bits: int, block_size: int = 0) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in ALLOWED_BITS:
        raise ConfigError(f"bits={bits!r} is not allowed: use 1..8 (quantized), 16 (half) or 32 (raw)")
    check_block_size(block_size)
    if block_size and bits not in QUANTIZED_BITS:
        raise ConfigError(f"block_size={block_size} cuts a quantized message into grids; bits={bits} sends values "
                          "unquantized: use block_size=0")


def grid_nbytes(count: int, block_size: int) -> int:
    """The blocks' float32 offsets and scales of a version-2 message (0 for one grid per message)."""
    return 8 * block_count(count, block_size) if block_size else 0


def payload_nbytes(count: int, bits: int, block_size: int = 0) -> int:
    """Bytes after the header for ``count`` elements at ``bits`` (with one grid per ``block_size``)."""
    _check_bits(bits, block_size)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if block_size:
        return grid_nbytes(count, block_size) + packed_nbytes(count, bits)
    if bits == 16:
        return 2 * count
    if bits == 32:
        return 4 * count
    return packed_nbytes(count, bits)


def message_nbytes(count: int, bits: int, block_size: int = 0) -> int:
    """The exact size of a message of ``count`` elements: what a receiver allocates before it receives."""
    return HEADER_BYTES + payload_nbytes(count, bits, block_size)


def encode_message(
    x: Tensor, bits: int, sender: int, iteration: int, seed: int = 0, out: Tensor | None = None,
    block_size: int = 0,
) -> Tensor:
    """Encode x (any shape, flattened) as one uint8 message on x's device.

    1..8 bits: unbiased stochastic quantization with the stream ``noise_key(seed, sender, iteration)``, onto
    one grid (``block_size`` 0) or one grid per ``block_size`` elements (a version-2 message);
    16: float16; 32: float32 as is. Writes into ``out`` (``message_nbytes(x.numel(), bits, block_size)``
    bytes, same device) when given, so a sender can reuse one buffer every iteration.
    """
    _check_bits(bits, block_size)
    if not (0 <= sender < _U32 and 0 <= iteration < _U64):
        raise ValueError(f"sender must be in 0..2**32-1 and iteration in 0..2**64-1, got {sender}, {iteration}")
    flat = flat_float32(x)
    count = flat.numel()
    message = message_buffer(out, message_nbytes(count, bits, block_size), x.device)
    payload = message[HEADER_BYTES:]
    offset = scale = 0.0
    if block_size:
        grid_bytes = grid_nbytes(count, block_size)
        _, grids = quantize_pack_blocks(flat, bits, noise_key(seed, sender, iteration), block_size,
                                        out=payload[grid_bytes:])
        blocks = grid_bytes // 8
        payload[:4 * blocks].copy_(grids.offsets.view(torch.uint8))
        payload[4 * blocks:grid_bytes].copy_(grids.scales.view(torch.uint8))
        LAYOUT_V2.write(message, LAYOUT_V2.pack(bits, 0, count, iteration, sender, block_size, 0))
        return message
    if bits == 32:
        payload.copy_(flat.view(torch.uint8))  # byte copy: works whatever the alignment of a caller's buffer
    elif bits == 16:
        halves = flat.to(torch.float16)
        if count and not bool(torch.isfinite(halves).all()):
            raise DivergedError("cannot send as float16: a value is non-finite or beyond +-65504; use bits=32")
        payload.copy_(halves.view(torch.uint8))
    else:
        _, grid = quantize_pack(flat, bits, noise_key(seed, sender, iteration), out=payload)
        offset, scale = grid.offset, grid.scale
    LAYOUT.write(message, LAYOUT.pack(bits, 0, count, iteration, sender, offset, scale))
    return message


def read_header(message: Tensor) -> Header:
    """Parse and validate a message's header; any inconsistency raises :class:`WireFormatError`.

    The 40 header bytes are read on the host (for a CUDA message: one small device-to-host copy).

    Checks the magic number, version, header checksum, bits, reserved field, grid values and that the
    message's length is exactly what the header implies (so a truncated message is caught here). The grids
    of a version-2 message are checked by :func:`decode_message`.
    """
    if _version(message) == BLOCKED_VERSION:
        return _read_blocked_header(message)
    bits, reserved, count, iteration, sender, offset, scale = LAYOUT.unpack(message)
    if bits not in ALLOWED_BITS:
        raise WireFormatError(f"malformed message: bits={bits} is not one of 1..8, 16, 32")
    if reserved != 0:
        raise WireFormatError(f"malformed message: reserved header field is {reserved}, expected 0")
    if count >= MAX_STREAM:
        raise WireFormatError(f"malformed message: count={count} exceeds the limit of {MAX_STREAM - 1} elements")
    grid_ok = all(abs(v) < float("inf") for v in (offset, scale)) and scale >= 0
    if not grid_ok or (bits in (16, 32) and (offset, scale) != (0.0, 0.0)):
        raise WireFormatError(f"malformed message: grid offset={offset}, scale={scale} is not valid at bits={bits}")
    _check_length(message, count, bits, 0)
    return Header(WIRE_VERSION, bits, count, offset, scale, sender, iteration)


def _version(message: Tensor) -> int | None:
    if isinstance(message, Tensor) and message.dtype == torch.uint8 and message.dim() == 1 and message.numel() > 4:
        return int(message[4])
    return None  # LAYOUT.unpack says what is wrong with it


def _read_blocked_header(message: Tensor) -> Header:
    bits, reserved, count, iteration, sender, block_size, reserved2 = LAYOUT_V2.unpack(message)
    if bits not in QUANTIZED_BITS:
        raise WireFormatError(f"malformed message: a block-wise message has bits in 1..8, got bits={bits}")
    if reserved or reserved2:
        raise WireFormatError(f"malformed message: reserved header fields are {reserved}, {reserved2}, expected 0")
    if count >= MAX_STREAM:
        raise WireFormatError(f"malformed message: count={count} exceeds the limit of {MAX_STREAM - 1} elements")
    if block_size == 0 or block_size % BLOCK_ALIGN or block_size > MAX_BLOCK:
        raise WireFormatError(f"malformed message: block_size={block_size} is not a positive multiple of "
                              f"{BLOCK_ALIGN} up to {MAX_BLOCK}")
    _check_length(message, count, bits, block_size)
    return Header(BLOCKED_VERSION, bits, count, 0.0, 0.0, sender, iteration, block_size)


def _check_length(message: Tensor, count: int, bits: int, block_size: int) -> None:
    expected = message_nbytes(count, bits, block_size)
    if message.numel() != expected:
        problem = "truncated" if message.numel() < expected else "oversized"
        blocks = f" in blocks of {block_size}" if block_size else ""
        raise WireFormatError(f"{problem} message: {message.numel()} bytes, but count={count} at bits={bits}{blocks} "
                              f"needs {expected} bytes")


def _view_as(payload: Tensor, dtype: torch.dtype) -> Tensor:
    """The payload bytes as ``dtype`` values, in place unless the buffer is misaligned or strided."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if not payload.is_contiguous() or payload.storage_offset() % itemsize:
        payload = payload.clone()
    return payload.view(dtype)


def decode_message(
    message: Tensor,
    *,
    expected_bits: int | None = None,
    expected_count: int | None = None,
    expected_sender: int | None = None,
    expected_iteration: int | None = None,
    expected_block_size: int | None = None,
    out: Tensor | None = None,
) -> tuple[Header, Tensor]:
    """Validate a message and return its header and its ``count`` float32 values (into ``out`` when given).

    Every ``expected_*`` that is not None must match the header, else :class:`WireFormatError` names each
    field that differs.
    """
    header = read_header(message)
    check_expected("message", header, bits=expected_bits, count=expected_count, sender=expected_sender,
                   iteration=expected_iteration, block_size=expected_block_size)
    payload = message[HEADER_BYTES:]
    if out is not None and (out.dtype != torch.float32 or out.numel() != header.count or not out.is_contiguous()
                            or out.device != message.device):
        raise ValueError(
            f"out must be a contiguous float32 tensor of {header.count} elements on {message.device}, "
            f"got {out.dtype} with {out.numel()} elements on {out.device}"
        )
    values = torch.empty(header.count, dtype=torch.float32, device=message.device) if out is None else out.reshape(-1)
    if header.block_size:
        grid_bytes = grid_nbytes(header.count, header.block_size)
        offsets, scales = _view_as(payload[:grid_bytes], torch.float32).view(2, grid_bytes // 8)
        if grid_bytes and not bool((torch.isfinite(offsets) & torch.isfinite(scales) & (scales >= 0)).all()):
            raise WireFormatError(f"malformed message from sender {header.sender} at iteration {header.iteration}: "
                                  "a block's grid offset or scale is non-finite or negative")
        unpack_dequantize_blocks(payload[grid_bytes:], header.bits, header.count, offsets, scales, header.block_size,
                                 out=values)
    elif header.bits in (16, 32):
        values.copy_(_view_as(payload, torch.float16 if header.bits == 16 else torch.float32))
    else:
        unpack_dequantize(payload, header.bits, header.count, header.offset, header.scale, out=values)
    return header, values
