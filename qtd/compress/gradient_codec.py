"""A worker's gradient compressor in parameter-server mode: error feedback + TopK or Block-Sign + wire message.

State + step: the codec holds the error-feedback residual e; ``encode`` compresses g + e into one message
and sets e <- (g + e) - (what the message carries), decoded from the message itself, so float16 rounding
of sent values is fed back too. ``decode_add`` adds a (possibly another worker's) message into a dense sum.
Pure tensor code: the caller moves the bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .blocksign import blocksign_compress
from .error_feedback import ErrorFeedback
from .gradient_wire import (decode_sign_message, decode_topk_message, encode_sign_message, encode_topk_message,
                            sign_message_nbytes, topk_message_nbytes)
from .topk import topk_compress, topk_decompress


class _ErrorFeedbackCodec:
    """Shared residual handling; subclasses define ``_encode_compensated`` and ``_decode``."""

    message_nbytes: int

    def __init__(self, like: Tensor, error_feedback: bool) -> None:
        self.numel = like.numel()
        self.memory = ErrorFeedback(like.reshape(-1)) if error_feedback else None

    @property
    def residual(self) -> Tensor | None:
        return None if self.memory is None else self.memory.residual

    def encode(self, grad: Tensor, sender: int, iteration: int, out: Tensor | None = None) -> Tensor:
        """The message for this step (``message_nbytes`` bytes, into ``out`` if given); updates the residual."""
        flat = grad.detach().reshape(-1)
        compensated = self.memory.compensate(flat) if self.memory is not None else flat
        message = self._encode_compensated(compensated, sender, iteration, out)
        if self.memory is not None:
            self.memory.update(compensated, self.decode(message, sender, iteration))
        return message

    def decode(self, message: Tensor, sender: int | None = None, iteration: int | None = None) -> Tensor:
        """The dense float32 vector a message carries (validated against this codec's shape)."""
        return self._decode(message, sender, iteration)

    def decode_add(self, message: Tensor, total: Tensor, sender: int | None = None,
                   iteration: int | None = None) -> None:
        """total += the dense vector of ``message``."""
        total.add_(self._decode(message, sender, iteration))

    def _encode_compensated(self, x: Tensor, sender: int, iteration: int, out: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _decode(self, message: Tensor, sender: int | None, iteration: int | None) -> Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {} if self.memory is None else {"residual": self.memory.residual.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.memory is not None:
            self.memory.residual.copy_(state["residual"].to(self.memory.residual.device))


class TopKCodec(_ErrorFeedbackCodec):
    """c = TopK(g + e, k), sent as k values (float16 or float32) and k bit-packed indices."""

    def __init__(self, like: Tensor, k: int, value_bits: int = 32, error_feedback: bool = True) -> None:
        super().__init__(like, error_feedback)
        if not 1 <= k <= self.numel:
            raise ValueError(f"k={k} must be in 1..{self.numel} (the number of parameters)")
        self.k, self.value_bits = k, value_bits
        self.message_nbytes = topk_message_nbytes(self.numel, k, value_bits)

    def _encode_compensated(self, x: Tensor, sender: int, iteration: int, out: Tensor | None) -> Tensor:
        return encode_topk_message(topk_compress(x, self.k), self.value_bits, sender, iteration, out=out)

    def _sparse(self, message: Tensor, sender: int | None, iteration: int | None):
        _, sparse = decode_topk_message(message, expected_numel=self.numel, expected_count=self.k,
                                        expected_sender=sender, expected_iteration=iteration)
        return sparse

    def _decode(self, message: Tensor, sender: int | None, iteration: int | None) -> Tensor:
        return topk_decompress(self._sparse(message, sender, iteration))

    def decode_add(self, message: Tensor, total: Tensor, sender: int | None = None,
                   iteration: int | None = None) -> None:
        sparse = self._sparse(message, sender, iteration)  # indices are unique: one add per entry
        total.index_add_(0, sparse.indices, sparse.values.to(total.dtype))


class BlockSignCodec(_ErrorFeedbackCodec):
    """c = scale_b * sign(g + e) per block (layer), scale_b = mean |g + e| over the block; one bit per element."""

    def __init__(self, like: Tensor, block_sizes: Sequence[int], error_feedback: bool = True) -> None:
        super().__init__(like, error_feedback)
        self.block_sizes = [int(b) for b in block_sizes]
        if sum(self.block_sizes) != self.numel:
            raise ValueError(f"block sizes sum to {sum(self.block_sizes)}, expected {self.numel}")
        self.message_nbytes = sign_message_nbytes(self.numel, len(self.block_sizes))
        starts = [sum(self.block_sizes[:i]) for i in range(len(self.block_sizes))]
        self._slices = list(zip(starts, self.block_sizes))

    def _encode_compensated(self, x: Tensor, sender: int, iteration: int, out: Tensor | None) -> Tensor:
        packed, scales = blocksign_compress(x, self.block_sizes)
        return encode_sign_message(packed, scales, self.numel, sender, iteration, out=out)

    def _signs_and_scales(self, message: Tensor, sender: int | None, iteration: int | None):
        _, packed, scales = decode_sign_message(message, expected_numel=self.numel,
                                                expected_count=len(self.block_sizes),
                                                expected_sender=sender, expected_iteration=iteration)
        table = _sign_table(message.device)
        signs = table.index_select(0, packed.to(torch.int64)).reshape(-1)[:self.numel]  # +-1.0, bit set = +1
        return signs, scales.tolist()

    def _decode(self, message: Tensor, sender: int | None, iteration: int | None) -> Tensor:
        """Equal to :func:`.blocksign.blocksign_decompress` (scale * +-1 is exact), without per-element
        block ids: a 256-entry table turns each byte into eight signs, then one multiply per block."""
        signs, scales = self._signs_and_scales(message, sender, iteration)
        for (start, size), scale in zip(self._slices, scales):
            signs[start:start + size].mul_(scale)
        return signs

    def decode_add(self, message: Tensor, total: Tensor, sender: int | None = None,
                   iteration: int | None = None) -> None:
        signs, scales = self._signs_and_scales(message, sender, iteration)
        for (start, size), scale in zip(self._slices, scales):
            total[start:start + size].add_(signs[start:start + size], alpha=scale)


_SIGN_TABLES: dict[torch.device, Tensor] = {}


def _sign_table(device: torch.device) -> Tensor:
    """(256, 8) float32: row b holds the eight signs stored in byte b, least significant bit first."""
    if device not in _SIGN_TABLES:
        bits = (torch.arange(256)[:, None] >> torch.arange(8)) & 1
        _SIGN_TABLES[device] = (bits.to(torch.float32) * 2 - 1).to(device)
    return _SIGN_TABLES[device]
