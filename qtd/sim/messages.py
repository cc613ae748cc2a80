"""What each simulated node's neighbours receive: the decoded values of its wire message.

A real node sends ``encode_message(x_i, bits, sender=i, iteration=t, seed=run.seed)`` and its neighbours
use ``decode_message(...)``. The simulator needs only the decoded values, so it takes the cheaper of two
bit-identical routes through :mod:`qtd.compress` (``tests/test_sim.py`` checks they agree bit for bit):

- s = 1..8: ``dequantize(quantize(x_i, s, noise_key(seed, i, t)))`` on the plain-torch path, or
  encode + decode on the fused fast path (numba / Triton) when it is available, which is faster still
  (block-wise grids, ``compression.block_size`` > 0, always encode + decode);
- s = 16, 32: the encoding is element-wise and needs no random key, so one message for the whole stack
  of models holds the same values as n messages.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..compress import decode_message, dequantize, encode_message, message_nbytes, noise_key, quantize, select_backend


class MessageCodec:
    """Decoded messages of ``numel``-parameter models at ``bits``, with reusable buffers."""

    def __init__(self, numel: int, bits: int, seed: int, device: torch.device, block_size: int = 0) -> None:
        self.numel, self.bits, self.seed, self.block_size = numel, bits, seed, block_size
        self.nbytes = message_nbytes(numel, bits, block_size)
        # block-wise grids always take encode + decode (there is no codes-only route for them)
        self._fused = bits <= 8 and (block_size > 0 or select_backend(device) != "reference")
        self._buffer = torch.empty(self.nbytes, dtype=torch.uint8, device=device) if self._fused else None

    def node(self, x: Tensor, sender: int, iteration: int, out: Tensor) -> Tensor:
        """The values node ``sender``'s neighbours decode from its message at ``iteration``, into ``out``."""
        if self.bits > 8:
            message = encode_message(x, self.bits, sender, iteration, seed=self.seed)
            return out.copy_(decode_message(message)[1])
        if self._fused:
            encode_message(x, self.bits, sender, iteration, seed=self.seed, out=self._buffer,
                           block_size=self.block_size)
            decode_message(self._buffer, expected_bits=self.bits, expected_count=self.numel,
                           expected_sender=sender, expected_iteration=iteration,
                           expected_block_size=self.block_size, out=out)
            return out
        return out.copy_(dequantize(quantize(x, self.bits, noise_key(self.seed, sender, iteration))))

    def all(self, models: Tensor, iteration: int, out: Tensor) -> Tensor:
        """Every node's decoded message at ``iteration`` (row i: node i's), into ``out`` (n, p)."""
        if self.bits > 8:
            decode_message(encode_message(models, self.bits, 0, iteration, seed=self.seed), out=out)
            return out
        for i in range(models.shape[0]):
            self.node(models[i], i, iteration, out[i])
        return out
