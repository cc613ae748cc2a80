"""A module's tensors seen as one flat float32 vector, without moving them: what is encoded and exchanged.

The wrapper leaves the user's parameters where they are (no views into a buffer of its own, unlike the
engine's :class:`qtd.models.FlatModel`), so any optimizer, ``zero_grad(set_to_none=True)``, gradient clipping
and ``load_state_dict`` keep working. Copying p values into one vector per round costs far less than a
forward and backward pass.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


class TensorVector:
    """``tensors`` (float32, one device) as one flat vector: :meth:`gather` copies them in, :meth:`add_` and
    :meth:`copy_` write a flat vector back."""

    def __init__(self, tensors: Sequence[Tensor]) -> None:
        self.tensors = list(tensors)
        self.sizes = [t.numel() for t in self.tensors]
        self.numel = sum(self.sizes)
        device = self.tensors[0].device if self.tensors else torch.device("cpu")
        self.flat = torch.zeros(self.numel, dtype=torch.float32, device=device)

    def __bool__(self) -> bool:
        return self.numel > 0

    def gather(self, out: Tensor | None = None) -> Tensor:
        """The tensors' current values, flat (into ``out``, else into the vector's own buffer)."""
        out = self.flat if out is None else out
        if self.tensors:
            torch.cat([t.detach().reshape(-1) for t in self.tensors], out=out)
        return out

    def pieces(self, flat: Tensor) -> list[Tensor]:
        """``flat`` cut into views shaped like the tensors."""
        return [piece.view_as(t) for piece, t in zip(flat.split(self.sizes), self.tensors)]

    @torch.no_grad()
    def add_(self, flat: Tensor) -> None:
        if self.tensors:
            torch._foreach_add_([t.data for t in self.tensors], self.pieces(flat))

    @torch.no_grad()
    def copy_(self, flat: Tensor) -> None:
        for t, piece in zip(self.tensors, self.pieces(flat)):
            t.data.copy_(piece)
