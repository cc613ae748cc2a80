"""Wire messages of compressed gradients (parameter-server mode): TopK and Block-Sign.

Every message is one contiguous uint8 tensor: a 32-byte header, then the payload. Its size depends only on
(numel, k, value_bits) or (numel, blocks), so every worker's message has the same length and a fixed-size
all-gather can move them.

Header (little-endian, ``GRAD_HEADER_FORMAT``)::

    offset size field
         0    2 magic       b"QG"
         2    1 version     GRAD_WIRE_VERSION
         3    1 kind        1 = TopK, 2 = Block-Sign
         4    1 value_bits  TopK: 16 (float16) or 32 (float32) values; Block-Sign: 32 (float32 scales)
         5    1 index_bits  TopK: ceil(log2 numel) (at least 1); Block-Sign: 1 (one sign bit per element)
         6    2 reserved    0
         8    8 numel       length of the dense gradient, 1..2**56
        16    4 count       TopK: k entries; Block-Sign: number of blocks (scales)
        20    4 sender
        24    4 iteration   (mod 2**32)
        28    4 crc32       zlib.crc32 of bytes 0..27

TopK payload: k values (value_bits each), then the k indices in strictly increasing order, bit-packed in
index_bits bits each (:mod:`.uint_packing`). Block-Sign payload: the float32 scales, then the sign bits
(bit set = non-negative, :func:`.blocksign.blocksign_compress`), ceil(numel / 8) bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import WireFormatError
from .header import HeaderLayout, check_expected, message_buffer
from .packing import packed_nbytes
from .topk import Sparse
from .uint_packing import MAX_UINT_BITS, index_bits, pack_uints, uint_nbytes, unpack_uints

GRAD_MAGIC = b"QG"
GRAD_WIRE_VERSION = 1
GRAD_HEADER_FORMAT = "<2sBBBBHQIIII"
LAYOUT = HeaderLayout("gradient message", GRAD_HEADER_FORMAT, GRAD_MAGIC, GRAD_WIRE_VERSION, "worker")
GRAD_HEADER_BYTES = LAYOUT.nbytes
KIND_TOPK = 1
KIND_SIGN = 2
VALUE_BITS = (16, 32)
_VALUE_DTYPES = {16: torch.float16, 32: torch.float32}
MAX_NUMEL = 2**MAX_UINT_BITS  # the largest dense gradient: its indices fit the uint packing's widest values

assert GRAD_HEADER_BYTES == 32


@dataclass(frozen=True)
class GradHeader:
    """What a gradient message says about itself."""

    kind: int
    value_bits: int
    index_bits: int
    numel: int
    count: int
    sender: int
    iteration: int


def topk_message_nbytes(numel: int, k: int, value_bits: int = 32) -> int:
    """Exact size of a TopK message: header + k values + k packed indices."""
    _check_value_bits(value_bits)
    if not 0 <= k <= numel:
        raise ValueError(f"k={k} must be in 0..{numel}")
    return GRAD_HEADER_BYTES + k * value_bits // 8 + uint_nbytes(k, index_bits(numel))


def sign_message_nbytes(numel: int, blocks: int) -> int:
    """Exact size of a Block-Sign message: header + one float32 scale per block + one bit per element."""
    return GRAD_HEADER_BYTES + 4 * blocks + packed_nbytes(numel, 1)


def _check_value_bits(value_bits: int) -> None:
    if value_bits not in VALUE_BITS:
        raise ValueError(f"value_bits={value_bits!r} must be 16 (float16) or 32 (float32)")


def _write(message: Tensor, header: GradHeader, parts: list[Tensor]) -> Tensor:
    LAYOUT.write(message, LAYOUT.pack(header.kind, header.value_bits, header.index_bits, 0, header.numel,
                                      header.count, header.sender, header.iteration % 2**32))
    offset = GRAD_HEADER_BYTES
    for part in parts:
        message[offset:offset + part.numel()].copy_(part)
        offset += part.numel()
    return message


def _as_bytes(t: Tensor) -> Tensor:
    return t.contiguous().view(torch.uint8).reshape(-1)


def encode_topk_message(sparse: Sparse, value_bits: int, sender: int, iteration: int,
                        out: Tensor | None = None) -> Tensor:
    """Encode a TopK selection; entries are sent sorted by index so the message is canonical.

    With value_bits=16 the values are rounded to float16; a value beyond float16's range raises, since
    it would arrive as infinity.
    """
    _check_value_bits(value_bits)
    numel, k = sparse.numel, sparse.indices.numel()
    device = sparse.values.device
    message = message_buffer(out, topk_message_nbytes(numel, k, value_bits), device)
    order = torch.argsort(sparse.indices)
    indices, values = sparse.indices[order], sparse.values[order].to(_VALUE_DTYPES[value_bits])
    if value_bits == 16 and k and not bool(torch.isfinite(values).all()):
        raise ValueError("a TopK value is beyond float16's range (+-65504): use ps.value_bits=32")
    header = GradHeader(KIND_TOPK, value_bits, index_bits(numel), numel, k, sender, iteration)
    return _write(message, header, [_as_bytes(values), pack_uints(indices, header.index_bits)])


def encode_sign_message(packed_signs: Tensor, scales: Tensor, numel: int, sender: int, iteration: int,
                        out: Tensor | None = None) -> Tensor:
    """Encode Block-Sign output (:func:`.blocksign.blocksign_compress`): float32 scales, then sign bits."""
    blocks = scales.numel()
    if packed_signs.dtype != torch.uint8 or packed_signs.numel() != packed_nbytes(numel, 1):
        raise ValueError(f"packed_signs must be {packed_nbytes(numel, 1)} uint8 bytes for {numel} elements")
    message = message_buffer(out, sign_message_nbytes(numel, blocks), packed_signs.device)
    header = GradHeader(KIND_SIGN, 32, 1, numel, blocks, sender, iteration)
    return _write(message, header, [_as_bytes(scales.to(torch.float32)), packed_signs.reshape(-1)])


def read_grad_header(message: Tensor, *, expected_kind: int | None = None, expected_numel: int | None = None,
                     expected_count: int | None = None, expected_sender: int | None = None,
                     expected_iteration: int | None = None) -> GradHeader:
    """Parse and validate a header; the message's length must be exactly what the header implies."""
    kind, value_bits, idx_bits, reserved, numel, count, sender, iteration = LAYOUT.unpack(message)
    if reserved != 0 or kind not in (KIND_TOPK, KIND_SIGN) or numel < 1:
        raise WireFormatError(f"malformed gradient message: kind={kind}, reserved={reserved}, numel={numel}")
    if numel > MAX_NUMEL:
        raise WireFormatError(f"malformed gradient message from sender {sender}: numel={numel} exceeds the "
                              f"{MAX_NUMEL} elements (2**{MAX_UINT_BITS}) whose TopK indices the format can pack")
    if kind == KIND_TOPK:
        if value_bits not in VALUE_BITS or idx_bits != index_bits(numel) or count > numel:
            raise WireFormatError(f"malformed TopK message: value_bits={value_bits}, index_bits={idx_bits}, "
                                  f"k={count} for numel={numel}")
        expected_nbytes = topk_message_nbytes(numel, count, value_bits)
    else:
        if value_bits != 32 or idx_bits != 1 or count > numel:
            raise WireFormatError(f"malformed Block-Sign message: value_bits={value_bits}, "
                                  f"index_bits={idx_bits}, blocks={count} for numel={numel}")
        expected_nbytes = sign_message_nbytes(numel, count)
    if message.numel() != expected_nbytes:
        problem = "truncated" if message.numel() < expected_nbytes else "oversized"
        raise WireFormatError(f"{problem} gradient message: {message.numel()} bytes, the header implies "
                              f"{expected_nbytes}")
    header = GradHeader(kind, value_bits, idx_bits, numel, count, sender, iteration)
    check_expected("gradient message", header, kind=expected_kind, numel=expected_numel, count=expected_count,
                   sender=expected_sender,
                   iteration=None if expected_iteration is None else expected_iteration % 2**32)
    return header


def _payload_as(payload: Tensor, dtype: torch.dtype, count: int) -> Tensor:
    itemsize = torch.empty(0, dtype=dtype).element_size()
    chunk = payload[:count * itemsize]
    if chunk.storage_offset() % itemsize:
        chunk = chunk.clone()
    return chunk.view(dtype)


def decode_topk_message(message: Tensor, **expected: int | None) -> tuple[GradHeader, Sparse]:
    """Validate a TopK message; returns its header and its entries (float32 values, increasing indices)."""
    header = read_grad_header(message, expected_kind=KIND_TOPK, **expected)
    payload = message[GRAD_HEADER_BYTES:]
    k, value_nbytes = header.count, header.count * header.value_bits // 8
    values = _payload_as(payload, _VALUE_DTYPES[header.value_bits], k).to(torch.float32)
    indices = unpack_uints(payload[value_nbytes:], header.index_bits, k)
    if k and (int(indices[-1]) >= header.numel or (k > 1 and not bool((indices[1:] > indices[:-1]).all()))):
        raise WireFormatError(f"malformed TopK message from sender {header.sender}: indices must be strictly "
                              f"increasing and below numel={header.numel}")
    return header, Sparse(values, indices, header.numel)


def decode_sign_message(message: Tensor, **expected: int | None) -> tuple[GradHeader, Tensor, Tensor]:
    """Validate a Block-Sign message; returns its header, the packed sign bits and the float32 scales."""
    header = read_grad_header(message, expected_kind=KIND_SIGN, **expected)
    payload = message[GRAD_HEADER_BYTES:]
    scales = _payload_as(payload, torch.float32, header.count).clone()
    if not bool(torch.isfinite(scales).all()) or bool((scales < 0).any()):
        raise WireFormatError(f"malformed Block-Sign message from sender {header.sender}: scales must be "
                              "finite and non-negative")
    return header, payload[4 * header.count:], scales
