"""A node's local optimizer in the decentralized algorithms: momentum (heavy ball or Nesterov), weight decay
and a learning-rate schedule, applied to the gradient before the algorithm's update rule (state + step).

Every update rule takes a step of alpha (times eps for the quantized ones) along a direction d. Plain SGD is
d = g, the paper's rule. Otherwise d is what ``torch.optim.SGD`` steps along (dampening 0):

    d = g + weight_decay * x;   buf <- momentum * buf + d;   d = buf (heavy ball)  or  d + momentum * buf (Nesterov)

and alpha_t = alpha times the schedule of :func:`.schedules.scheduled_lr` at iteration t. So a QuanTimed
node with these options steps exactly as "torch.optim.SGD(lr = alpha_t * eps, momentum, nesterov,
weight_decay), then the consensus step", the form the library wrapper runs (:mod:`qtd.api`).
With the defaults :meth:`LocalOptimizer.direction` returns the gradient itself and :meth:`sizes` the step
sizes themselves, so a plain run computes exactly what it did before these options existed.

Pure: tensor methods only (works on one model or a stack of them, one row per node, in the simulator).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .schedules import StepSizes, scheduled_lr

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class LocalSGD:
    """The local optimizer's hyperparameters (``algorithm.momentum`` ... ``algorithm.decay_gamma``)."""

    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_decay: str = "none"  # none, cosine, step
    decay_every: int = 0
    decay_gamma: float = 0.1
    horizon: int = 1  # iterations of the run: where a cosine schedule reaches 0

    @property
    def scheduled(self) -> bool:
        return bool(self.warmup_steps) or self.lr_decay != "none"

    @property
    def plain(self) -> bool:
        """The paper's plain SGD step: no momentum, no weight decay, no schedule."""
        return not (self.momentum or self.weight_decay or self.scheduled)


class LocalOptimizer:
    """The momentum buffer of one node (or of a stack of nodes, ``like`` being the stack) and the step."""

    def __init__(self, options: LocalSGD, like: "Tensor") -> None:
        self.options = options
        self.buffer = like.new_zeros(like.shape) if options.momentum else None

    def direction(self, grad: "Tensor", x: "Tensor", node: int | None = None) -> "Tensor":
        """d for gradient ``grad`` at model ``x`` (updates the momentum buffer; ``node``: that row of a
        stacked buffer). The gradient itself when there is neither momentum nor weight decay."""
        o = self.options
        if not (o.momentum or o.weight_decay):
            return grad
        d = grad.add(x, alpha=o.weight_decay) if o.weight_decay else grad
        if not o.momentum:
            return d
        buffer = self.buffer if node is None else self.buffer[node]
        buffer.mul_(o.momentum).add_(d)
        return d.add(buffer, alpha=o.momentum) if o.nesterov else buffer

    def sizes(self, sizes: StepSizes, iteration: int) -> StepSizes:
        """The step sizes of ``iteration``: alpha scheduled, eps as it is (the same object without a schedule)."""
        o = self.options
        if not o.scheduled:
            return sizes
        alpha = scheduled_lr(sizes.alpha, iteration, o.warmup_steps, o.lr_decay, o.decay_every, o.decay_gamma,
                             o.horizon)
        return replace(sizes, alpha=alpha)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.buffer is None else {"momentum_buffer": self.buffer.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """KeyError when a momentum run resumes from a checkpoint written without momentum."""
        if self.buffer is not None:
            saved = state["momentum_buffer"]
            if saved.shape != self.buffer.shape:
                raise ValueError(f"momentum_buffer has shape {tuple(saved.shape)}, expected {tuple(self.buffer.shape)}")
            self.buffer.copy_(saved.to(self.buffer.device))
