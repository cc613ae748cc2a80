"""One interface over every compressor a gossip message can use: what a message of ``numel`` values costs,
how to encode a tensor into one, and how to decode one back (checking its sender and iteration).

- :class:`GridCodec`: the s-bit min-max grid (1..8 bits), float16 or float32 of :mod:`.wire`, with the
  counter-based noise of ``noise_key(seed, sender, iteration)``: what every gossip algorithm sends.
- :class:`SparseCodec`: TopK (k values and their indices) or the sign with its norm (mean |x| times
  sign(x), one bit per element) of :mod:`.gradient_codec`, without error feedback: CHOCO's compressed
  differences need none, since the public copies carry the compression error into the next difference.

Pure tensor code: the caller moves the bytes.
"""

from __future__ import annotations

import math

from torch import Tensor

from ..formats import DIFFERENCE_KINDS
from .gradient_codec import BlockSignCodec, TopKCodec
from .wire import decode_message, encode_message, message_nbytes


class GridCodec:
    """``block_size`` > 0: one grid per that many elements (a version-2 message, see :mod:`.blocks`)."""

    def __init__(self, numel: int, bits: int, seed: int, block_size: int = 0) -> None:
        self.numel, self.bits, self.seed, self.block_size = int(numel), int(bits), seed, int(block_size)
        self.message_nbytes = message_nbytes(self.numel, self.bits, self.block_size)

    def encode(self, x: Tensor, sender: int, iteration: int, out: Tensor) -> None:
        encode_message(x, self.bits, sender, iteration, seed=self.seed, out=out, block_size=self.block_size)

    def decode(self, message: Tensor, sender: int, iteration: int, out: Tensor) -> Tensor:
        return decode_message(message, expected_bits=self.bits, expected_count=self.numel, expected_sender=sender,
                              expected_iteration=iteration, expected_block_size=self.block_size, out=out)[1]


class SparseCodec:
    def __init__(self, kind: str, like: Tensor, k_ratio: float) -> None:
        flat = like.reshape(-1)
        self.numel = flat.numel()
        if kind == "topk":
            self.inner = TopKCodec(flat, max(1, min(self.numel, math.ceil(k_ratio * self.numel))),
                                   error_feedback=False)
        else:  # sign with norm: one block, scale = mean |x| (the l1 norm over the count)
            self.inner = BlockSignCodec(flat, [self.numel], error_feedback=False)
        self.message_nbytes = self.inner.message_nbytes

    def encode(self, x: Tensor, sender: int, iteration: int, out: Tensor) -> None:
        self.inner.encode(x, sender, iteration, out=out)

    def decode(self, message: Tensor, sender: int, iteration: int, out: Tensor) -> Tensor:
        return out.copy_(self.inner.decode(message, sender, iteration))


def difference_codec(kind: str, like: Tensor, bits: int, k_ratio: float, seed: int,
                     block_size: int = 0) -> GridCodec | SparseCodec:
    """The codec of ``compression.differences``: ``grid`` at ``compression.bits`` (per ``block_size``
    elements when > 0), ``topk`` or ``sign``."""
    if kind == "grid":
        return GridCodec(like.numel(), bits, seed, block_size)
    if kind in ("topk", "sign"):
        return SparseCodec(kind, like, k_ratio)
    raise ValueError(f"compression.differences={kind!r}: choose one of {', '.join(DIFFERENCE_KINDS)}")
