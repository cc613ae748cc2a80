"""Block-Sign compression (Zheng, Huang & Kwok, NeurIPS 2019): per block, one sign bit per element and one
scale, the block's mean absolute value; decompressed as ``scale_b * sign(x)``. Blocks are usually layers.
Zero counts as positive. Biased by design: use it with :class:`.error_feedback.ErrorFeedback`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .packing import pack_bits, unpack_bits


def _block_ids(block_sizes: Sequence[int], numel: int, device: torch.device) -> Tensor:
    sizes = [int(b) for b in block_sizes]
    if any(b < 0 for b in sizes) or sum(sizes) != numel:
        raise ValueError(f"block_sizes must be >= 0 and sum to {numel} elements, got sum {sum(sizes)}: {sizes}")
    return torch.repeat_interleave(
        torch.arange(len(sizes), device=device), torch.tensor(sizes, dtype=torch.int64, device=device)
    )


def blocksign_compress(x: Tensor, block_sizes: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Packed sign bits (uint8, ceil(n/8) bytes, bit set = non-negative) and float32 per-block scales."""
    flat = x.detach().reshape(-1).to(torch.float32)
    ids = _block_ids(block_sizes, flat.numel(), flat.device)
    sizes = torch.tensor([int(b) for b in block_sizes], dtype=torch.float32, device=flat.device)
    sums = torch.zeros(len(sizes), dtype=torch.float32, device=flat.device).index_add_(0, ids, flat.abs())
    scales = sums / sizes.clamp(min=1)
    return pack_bits((flat >= 0).to(torch.uint8), 1), scales


def blocksign_decompress(packed: Tensor, scales: Tensor, block_sizes: Sequence[int]) -> Tensor:
    """The float32 vector ``scale_b * (+1 or -1)`` described by :func:`blocksign_compress`'s output."""
    numel = sum(int(b) for b in block_sizes)
    if scales.numel() != len(block_sizes):
        raise ValueError(f"{scales.numel()} scales for {len(block_sizes)} blocks")
    ids = _block_ids(block_sizes, numel, packed.device)
    signs = unpack_bits(packed, 1, numel).to(torch.float32) * 2 - 1
    return signs * scales.to(torch.float32)[ids]
