"""Pure update rules of the decentralized algorithms.

Every rule takes the node's model ``x`` (a flat tensor, or a stack of them, one row per node, in the
simulator), the already mixed neighbour term ``mixed = sum_{j in N_i} w_ij * z_j`` (a loop over received
messages in a real run, one matrix product over all nodes in the simulator), the self weight ``w_self``,
the gradient and the step sizes. They never touch the network; the real engine and the simulator both
call them, so both follow exactly the same maths.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def mix_neighbours(models: Sequence[Tensor], weights: Sequence[float], out: Tensor | None = None) -> Tensor:
    """sum_j weights[j] * models[j]; ``out`` (if given) is overwritten and returned."""
    if len(models) != len(weights):
        raise ValueError(f"got {len(models)} neighbour models but {len(weights)} weights")
    if not models:
        if out is None:
            raise ValueError("mix_neighbours needs an `out` tensor when there are no neighbours")
        return out.zero_()
    if out is None:
        out = torch.empty_like(models[0])
    torch.mul(models[0], weights[0], out=out)
    for model, weight in zip(models[1:], weights[1:]):
        out.add_(model, alpha=weight)
    return out


def _as_column(value: Tensor | float, like: Tensor) -> Tensor | float:
    """Per-node scalars (a 1-D tensor of length n) broadcast over a stack of n models."""
    if isinstance(value, Tensor) and value.dim() == 1 and like.dim() == 2:
        return value.to(like.dtype).unsqueeze(1)
    return value


def quantimed_update(x: Tensor, mixed: Tensor, w_self: Tensor | float, grad: Tensor,
                     alpha: float, eps: float) -> Tensor:
    """QuanTimed-DSGD (and Q-DSGD) step, returning the new model:

    x <- (1 - eps + eps * w_ii) * x + eps * sum_{j in N_i} w_ij * z_j - alpha * eps * g.
    """
    w_self = _as_column(w_self, x)
    return x * (1 - eps + eps * w_self) + eps * mixed - (alpha * eps) * grad


def qdsgd_update(x: Tensor, mixed: Tensor, w_self: Tensor | float, grad: Tensor,
                 alpha: float, eps: float) -> Tensor:
    """Q-DSGD uses the QuanTimed update with a fixed batch and no deadline."""
    return quantimed_update(x, mixed, w_self, grad, alpha, eps)


def dsgd_update(x: Tensor, mixed: Tensor, w_self: Tensor | float, grad: Tensor, alpha: float) -> Tensor:
    """DSGD (Yuan et al. 2016): x <- w_ii * x + sum_{j in N_i} w_ij * x_j - alpha * g.

    Asynchronous DSGD uses the same rule with the latest neighbour models a node holds.
    """
    w_self = _as_column(w_self, x)
    return x * w_self + mixed - alpha * grad


def async_dsgd_update(x: Tensor, mixed_latest: Tensor, w_self: Tensor | float, grad: Tensor,
                      alpha: float) -> Tensor:
    """Asynchronous DSGD: the DSGD rule over the most recent model received from each neighbour."""
    return dsgd_update(x, mixed_latest, w_self, grad, alpha)


def sgd_update(x: Tensor, grad: Tensor, lr: float) -> Tensor:
    """All-reduce SGD: x <- x - lr * mean gradient over all nodes (``grad`` already averaged)."""
    return x - lr * grad


def consensus_error(models: Tensor) -> float:
    """(1/n) sum_i ||x_i - x_bar||^2 for a stack of n models (one row each)."""
    mean = models.mean(dim=0, keepdim=True)
    return float(((models - mean) ** 2).sum(dim=1).mean())
