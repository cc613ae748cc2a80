"""Which training samples each node owns: disjoint index sets, one per node.

- ``contiguous``: node i gets the i-th block of consecutive samples in dataset order (the paper: 50
  nodes x 200 samples of MNIST);
- ``iid``: the same block sizes over a seeded shuffle;
- ``dirichlet``: label skew; node i draws its class mix q_i ~ Dirichlet(alpha * 1) and fills its block
  from the classes in those proportions (small alpha: few classes per node; large alpha: close to iid).

Block sizes are ``samples_per_node`` each, or, when it is 0, the whole dataset split as evenly as possible
(sizes differ by at most one).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from ..echo import shown

SCHEMES = ("contiguous", "iid", "dirichlet")


def block_sizes(size: int, nodes: int, samples_per_node: int = 0) -> list[int]:
    """How many samples each node gets; raises :class:`DataError` when the dataset is too small."""
    if nodes < 1:
        raise DataError(f"topology.nodes={nodes}: need at least one node to partition data over")
    if samples_per_node < 0:
        raise DataError(f"data.samples_per_node={samples_per_node} must be >= 0 (0: split the data evenly)")
    if samples_per_node:
        if samples_per_node * nodes > size:
            raise DataError(f"data.samples_per_node={samples_per_node} x topology.nodes={nodes} = "
                            f"{samples_per_node * nodes} samples, but the training set has only {size}: "
                            f"lower data.samples_per_node to at most {size // nodes} or use 0 to split evenly")
        return [samples_per_node] * nodes
    if size < nodes:
        raise DataError(f"the training set has {size} samples, fewer than topology.nodes={nodes}: "
                        f"every node needs at least one; use fewer nodes or more data")
    base, extra = divmod(size, nodes)
    return [base + 1 if node < extra else base for node in range(nodes)]


def partition(labels: Tensor, nodes: int, scheme: str, samples_per_node: int = 0,
              dirichlet_alpha: float = 0.5, seed: int = 0) -> list[Tensor]:
    """Disjoint sorted int64 index tensors into ``labels``' dataset, one per node.

    Every node that calls this with the same arguments gets the same answer, so each can take its own
    entry without any communication.
    """
    labels = labels.detach().cpu()
    if labels.dim() != 1:
        raise DataError(f"partition needs a 1-D tensor of labels, got shape {tuple(labels.shape)}")
    sizes = block_sizes(len(labels), nodes, samples_per_node)
    if scheme == "contiguous":
        order = torch.arange(len(labels))
    elif scheme == "iid":
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    elif scheme == "dirichlet":
        if not dirichlet_alpha > 0:
            raise DataError(f"data.dirichlet_alpha={dirichlet_alpha} must be > 0")
        return _dirichlet(labels.numpy(), sizes, dirichlet_alpha, seed)
    else:
        raise DataError(f"data.partition={shown(scheme)} is not allowed: choose one of " + ", ".join(SCHEMES))
    blocks = torch.split(order[:sum(sizes)], sizes)
    return [block.sort().values.to(torch.int64) for block in blocks]


def _dirichlet(labels: np.ndarray, sizes: list[int], alpha: float, seed: int) -> list[Tensor]:
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    # each class's samples in a seeded random order; a node takes the next ones of the classes it draws
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    remaining = np.array([len(pool) for pool in pools])
    taken = np.zeros(len(classes), dtype=np.int64)
    result = []
    for size in sizes:
        proportions = rng.dirichlet(np.full(len(classes), alpha))
        counts = np.zeros(len(classes), dtype=np.int64)
        need = size
        while need > 0:
            # classes that ran out are dropped and the node's proportions renormalised over the rest
            available = remaining - counts
            weights = proportions * (available > 0)
            if not np.isfinite(weights).all() or weights.sum() <= 0:  # the node's favourite classes are exhausted: take from what is left
                weights = (available > 0).astype(float)
            draw = np.minimum(rng.multinomial(need, weights / weights.sum()), available)
            counts += draw
            need -= int(draw.sum())
        chunks = [pools[c][taken[c]:taken[c] + counts[c]] for c in range(len(classes))]
        taken += counts
        remaining -= counts
        result.append(torch.from_numpy(np.sort(np.concatenate(chunks))).to(torch.int64))
    return result
