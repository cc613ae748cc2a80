"""Error-feedback memory, usable with any compressor (TopK, Block-Sign, quantization).

One step: ``c = compensate(g)`` (= g + e), compress c to whatever is sent, then ``update(c, sent_dense)``
sets e = c - sent_dense. What was left out is carried to the next step, so over T steps the sum of what was
sent plus the final residual equals the sum of the gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor


class ErrorFeedback:
    """The residual e of one worker; starts at zero, shaped and placed like ``like``."""

    def __init__(self, like: Tensor) -> None:
        self._residual = torch.zeros_like(like, memory_format=torch.contiguous_format)

    @property
    def residual(self) -> Tensor:
        return self._residual

    def compensate(self, grad: Tensor) -> Tensor:
        """grad + e, a new tensor: the thing to compress this step."""
        self._check(grad, "grad")
        return grad + self._residual

    def update(self, compensated: Tensor, sent_dense: Tensor) -> None:
        """e <- compensated - sent_dense, where sent_dense is the decompressed message actually sent."""
        self._check(compensated, "compensated")
        self._check(sent_dense, "sent_dense")
        torch.sub(compensated, sent_dense.reshape(compensated.shape), out=self._residual)

    def _check(self, t: Tensor, name: str) -> None:
        if t.numel() != self._residual.numel():
            raise ValueError(f"{name} has {t.numel()} elements, the error-feedback memory {self._residual.numel()}")
