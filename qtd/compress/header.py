"""The fixed-size header every qtd message starts with, for model messages (:mod:`.wire`) and gradient
messages (:mod:`.gradient_wire`) alike: little-endian fields, the magic number and format version
first, a CRC32 of all bytes before it last. One place packs, checks and writes it."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from ..errors import WireFormatError


@dataclass(frozen=True)
class HeaderLayout:
    """``fmt`` is the whole header's struct format: magic, version, the message's own fields, crc32."""

    kind: str  # "message" or "gradient message": how errors name it
    fmt: str
    magic: bytes
    version: int
    peers: str  # "node" or "worker": who must run the same qtd version
    reads: str = ""  # the versions this qtd reads, as errors name them ("versions 1 and 2"; default: this layout's)

    @property
    def nbytes(self) -> int:
        return struct.calcsize(self.fmt)

    def pack(self, *values: object) -> bytes:
        """The header bytes for the message's own fields (everything but magic, version and checksum)."""
        body = struct.pack(self.fmt, self.magic, self.version, *values, 0)[: self.nbytes - 4]
        return body + struct.pack("<I", zlib.crc32(body))

    def unpack(self, message: Tensor) -> tuple:
        """The message's own fields, after checking its type, length, magic, version and checksum.

        The header bytes are read on the host (for a CUDA message: one small device-to-host copy).
        """
        if not isinstance(message, Tensor) or message.dtype != torch.uint8 or message.dim() != 1:
            what = (f"{message.dtype} tensor of shape {tuple(message.shape)}" if isinstance(message, Tensor)
                    else type(message).__name__)
            raise WireFormatError(f"a qtd {self.kind} is a 1-D uint8 tensor, got a {what}")
        if message.numel() < self.nbytes:
            raise WireFormatError(f"truncated {self.kind}: {message.numel()} bytes is shorter than the "
                                  f"{self.nbytes}-byte header")
        raw = message[: self.nbytes].cpu().numpy().tobytes()
        magic, version, *values, crc = struct.unpack(self.fmt, raw)
        if magic != self.magic:
            raise WireFormatError(f"not a qtd {self.kind}: magic {magic!r}, expected {self.magic!r}")
        if version != self.version:
            raise WireFormatError(f"unsupported {'gradient ' if 'gradient' in self.kind else ''}wire format version "
                                  f"{version}: this qtd reads {self.reads or f'version {self.version}'}; run the same qtd version "
                                  f"on every {self.peers}")
        if crc != zlib.crc32(raw[:-4]):
            raise WireFormatError(f"corrupted {self.kind}: the header checksum does not match its contents")
        return tuple(values)

    def write(self, message: Tensor, header: bytes) -> None:
        message[: self.nbytes].copy_(torch.frombuffer(bytearray(header), dtype=torch.uint8))


def message_buffer(out: Tensor | None, nbytes: int, device: torch.device) -> Tensor:
    """``out`` checked to be a contiguous 1-D uint8 tensor of ``nbytes`` on ``device``, or a new one."""
    if out is None:
        return torch.empty(nbytes, dtype=torch.uint8, device=device)
    if out.dtype != torch.uint8 or out.dim() != 1 or out.numel() != nbytes or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous 1-D uint8 tensor of message_nbytes(...) = {nbytes} bytes, "
                         f"got {out.dtype} of shape {tuple(out.shape)}")
    if out.device != device:
        raise ValueError(f"out is on {out.device} but the tensor to encode is on {device}")
    return out


def check_expected(what: str, header: object, **expected: int | None) -> None:
    """Every ``expected`` value that is not None must match the header's field of that name."""
    names = {f.name for f in fields(header)}
    wrong = [f"{name}={getattr(header, name)} (expected {value})" for name, value in expected.items()
             if name in names and value is not None and getattr(header, name) != value]
    if wrong:
        raise WireFormatError(f"unexpected {what} from sender {getattr(header, 'sender')} at iteration "
                              f"{getattr(header, 'iteration')}: " + ", ".join(wrong))
