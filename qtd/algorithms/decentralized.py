"""Pure update rules of the decentralized algorithms.

Every rule takes the node's model ``x`` (a flat tensor, or a stack of them, one row per node, in the
simulator), the already mixed neighbour term ``mixed = sum_{j in N_i} w_ij * z_j`` (:func:`mix_neighbours`
over received messages in a real run, :func:`mix_stack` over all nodes in the simulator), the self weight
``w_self``, the gradient and the step sizes. They never touch the network; the real engine, the simulator
and the tests' reference all call them, so all follow exactly the same maths. Only tensor methods are used,
so that importing this module (the registry does, and the config's validation reads the registry) does not
load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from torch import Tensor


def mix_neighbours(pairs: Iterable[tuple["Tensor", float]], out: "Tensor") -> "Tensor":
    """out <- sum_j w_j * z_j over the (z_j, w_j) pairs, in order; zero when there are none.

    ``pairs`` may be a generator that decodes each neighbour's message into one reused buffer: every z_j is
    consumed before the next is produced.
    """
    out.zero_()
    for model, weight in pairs:
        out.add_(model, alpha=weight)
    return out


def mix_stack(neighbour_mixing: "Tensor", decoded: "Tensor") -> "Tensor":
    """Every node's mixed term at once: row i of (W - diag(W)) @ Z is sum_{j in N_i} w_ij z_j."""
    return neighbour_mixing @ decoded


def _as_column(value: "Tensor | float", like: "Tensor") -> "Tensor | float":
    """Per-node scalars (a 1-D tensor of length n) broadcast over a stack of n models."""
    if hasattr(value, "dim") and value.dim() == 1 and like.dim() == 2:
        return value.to(like.dtype).unsqueeze(1)
    return value


def quantimed_update(x: "Tensor", mixed: "Tensor", w_self: "Tensor | float", grad: "Tensor",
                     alpha: float, eps: float) -> "Tensor":
    """QuanTimed-DSGD (and Q-DSGD) step, returning the new model:

    x <- (1 - eps + eps * w_ii) * x + eps * sum_{j in N_i} w_ij * z_j - alpha * eps * g.
    """
    w_self = _as_column(w_self, x)
    return x * (1 - eps + eps * w_self) + eps * mixed - (alpha * eps) * grad


def dsgd_update(x: "Tensor", mixed: "Tensor", w_self: "Tensor | float", grad: "Tensor", alpha: float) -> "Tensor":
    """DSGD (Yuan et al. 2016): x <- w_ii * x + sum_{j in N_i} w_ij * x_j - alpha * g.

    Asynchronous DSGD uses the same rule with the latest neighbour models a node holds.
    """
    w_self = _as_column(w_self, x)
    return x * w_self + mixed - alpha * grad


def consensus_delta(mixed: "Tensor", w_self: "Tensor | float", x_sent: "Tensor", eps: float) -> "Tensor":
    """What the consensus step adds to a model: eps * sum_{j in N_i} w_ij (z_j - x_sent), computed as
    eps * (mixed - (1 - w_ii) * x_sent), since the neighbour weights sum to 1 - w_ii.

    ``x_sent`` is the model as it was sent (before the local optimizer step). Added to x - alpha eps g it
    gives exactly :func:`quantimed_update` (and with eps = 1, :func:`dsgd_update`):
    x - alpha eps g + eps (mixed - (1 - w_ii) x) = (1 - eps + eps w_ii) x + eps mixed - alpha eps g.
    """
    return (mixed - x_sent * (1 - w_self)) * eps


def sgd_update(x: "Tensor", grad: "Tensor", lr: float) -> "Tensor":
    """All-reduce SGD: x <- x - lr * mean gradient over all nodes (``grad`` already averaged)."""
    return x - lr * grad


def consensus_error(models: "Tensor") -> float:
    """(1/n) sum_i ||x_i - x_bar||^2 for a stack of n models (one row each)."""
    mean = models.mean(dim=0, keepdim=True)
    return float(((models - mean) ** 2).sum(dim=1).mean())
