"""TopK sparsification: keep the k entries of largest magnitude, send (values, indices)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Sparse:
    """k kept entries of a flat vector of ``numel`` elements."""

    values: Tensor  # same dtype as the input
    indices: Tensor  # int64 positions in the flattened input
    numel: int


def topk_compress(x: Tensor, k: int) -> Sparse:
    """The k entries of x (flattened) with the largest absolute values; ties broken by torch.topk."""
    flat = x.detach().reshape(-1)
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= flat.numel():
        raise ValueError(f"k={k!r} must be an integer in 0..{flat.numel()} (the number of elements)")
    indices = torch.topk(flat.abs(), k, sorted=False).indices
    return Sparse(flat[indices], indices, flat.numel())


def topk_decompress(s: Sparse, out: Tensor | None = None) -> Tensor:
    """The dense flat vector with s.values at s.indices and zeros elsewhere (written into ``out`` if given)."""
    if out is None:
        out = torch.zeros(s.numel, dtype=s.values.dtype, device=s.values.device)
    else:
        if out.numel() != s.numel:
            raise ValueError(f"out has {out.numel()} elements, the sparse vector {s.numel}")
        out = out.reshape(-1)
        out.zero_()
    return out.index_copy_(0, s.indices, s.values.to(out.dtype))
