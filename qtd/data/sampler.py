"""A node's local data: random micro-batches drawn from its own samples only."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError, DataError
from .arrays import ArrayDataset


class NodeSampler:
    """Draws micro-batches from ``dataset[indices]`` by random reshuffling.

    The node's samples are visited in a seeded random order; when that order is used up a new one is
    drawn and a batch may span the boundary, so every local sample is seen once per local epoch and any
    batch size works (a deadline loop asks for many small micro-batches). The state (generator, order,
    position) round-trips through :meth:`state_dict` so a resumed run draws exactly the batches the
    uninterrupted run would have.
    """

    def __init__(self, dataset: ArrayDataset, indices: Tensor, seed: int) -> None:
        indices = torch.as_tensor(indices).detach().cpu()
        if indices.dim() != 1 or len(indices) == 0:
            raise DataError(f"a node needs a non-empty 1-D tensor of sample indices, got shape "
                            f"{tuple(indices.shape)}; check data.samples_per_node and topology.nodes")
        if indices.is_floating_point() or int(indices.min()) < 0 or int(indices.max()) >= len(dataset):
            raise DataError(f"node sample indices must be integers in 0..{len(dataset) - 1}")
        self.dataset = dataset
        self.indices = indices.to(torch.int64)
        self._generator = torch.Generator().manual_seed(seed)
        self._order = torch.randperm(len(self.indices), generator=self._generator)
        self._position = 0

    def __len__(self) -> int:
        return len(self.indices)

    def next_indices(self, batch_size: int) -> Tensor:
        """Dataset indices of the next ``batch_size`` samples (the RNG advances as in :meth:`sample`)."""
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        pieces = []
        wanted = batch_size
        while wanted > 0:
            if self._position == len(self._order):
                self._order = torch.randperm(len(self.indices), generator=self._generator)
                self._position = 0
            take = min(wanted, len(self._order) - self._position)
            pieces.append(self._order[self._position:self._position + take])
            self._position += take
            wanted -= take
        local = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        return self.indices[local]

    def sample(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """A micro-batch of ``batch_size`` normalised inputs and labels from this node's samples."""
        return self.dataset.batch(self.next_indices(batch_size))

    def state_dict(self) -> dict[str, Any]:
        """Tensors and ints only, so ``torch.load(..., weights_only=True)`` can read it back."""
        return {"generator": self._generator.get_state(), "order": self._order.clone(),
                "position": self._position, "num_samples": len(self.indices)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            generator, order = state["generator"], state["order"]
            position, num_samples = int(state["position"]), int(state["num_samples"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"sampler state is missing or malformed ({exc!r}): the checkpoint does not "
                                  f"come from this version of qtd") from exc
        if num_samples != len(self.indices) or len(order) != num_samples or not 0 <= position <= num_samples:
            raise CheckpointError(f"sampler state is for {num_samples} local samples but this node has "
                                  f"{len(self.indices)}: the checkpoint was written with other data.* or "
                                  f"topology.nodes settings")
        if not torch.equal(order.sort().values, torch.arange(num_samples)):
            raise CheckpointError("sampler state holds an order that is not a permutation of the local samples")
        self._generator.set_state(generator)
        self._order = order.clone().to(torch.int64)
        self._position = position
