"""AMSGrad on the replicated server state of parameter-server mode (state + step)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .schedules import scheduled_lr

if TYPE_CHECKING:  # tensor methods only at run time: importing this module does not load torch
    from torch import Tensor


@dataclass
class AMSGradState:
    """Server-side moments; identical on every rank because they are fed identical gradients."""

    m: Tensor
    v: Tensor
    v_hat: Tensor
    step: int = 0

    @classmethod
    def zeros_like(cls, theta: Tensor) -> "AMSGradState":
        return cls(m=theta.new_zeros(theta.shape), v=theta.new_zeros(theta.shape), v_hat=theta.new_zeros(theta.shape))


def amsgrad_step(theta: Tensor, grad: Tensor, state: AMSGradState, lr: float, beta1: float = 0.9,
                 beta2: float = 0.999, eps: float = 1e-8) -> None:
    """In place: m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2; v_hat <- max(v_hat, v);
    theta <- theta - lr * m / sqrt(v_hat + eps)."""
    state.m.mul_(beta1).add_(grad, alpha=1 - beta1)
    state.v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    state.v_hat.copy_(state.v_hat.maximum(state.v))
    theta.addcdiv_(state.m, (state.v_hat + eps).sqrt(), value=-lr)
    state.step += 1


def lr_at(step: int, lr: float, warmup_steps: int = 0, decay_every: int = 0, decay_gamma: float = 0.1) -> float:
    """Linear warm-up over ``warmup_steps``, then multiply by ``decay_gamma`` every ``decay_every`` steps."""
    return scheduled_lr(lr, step, warmup_steps, "step" if decay_every else "none", decay_every, decay_gamma)
