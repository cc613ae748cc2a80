"""Step-size schedules of QuanTimed-DSGD (Reisizadeh et al., NeurIPS 2019)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class StepSizes:
    """alpha: gradient step; eps: QuanTimed's consensus step (1 for unquantized DSGD); gamma: CHOCO's
    consensus step on the public copies (1 where the rule has none)."""

    alpha: float
    eps: float
    gamma: float = 1.0


def step_sizes(schedule: str, alpha: float, eps: float, horizon: int) -> StepSizes:
    """Step sizes for a run of ``horizon`` iterations.

    ``paper``: alpha = a0 / T^(1/6), eps = e0 / T^(1/2) (the paper's non-convex rates), with a0 = ``alpha``
    and e0 = ``eps``; eps is capped at 1, beyond which the consensus step would overshoot.
    ``constant``: alpha and eps as given.
    """
    if horizon < 1:
        raise ConfigError(f"run.iterations={horizon!r} is not allowed: the step-size horizon must be >= 1")
    if schedule == "paper":
        return StepSizes(alpha=alpha / horizon ** (1 / 6), eps=min(1.0, eps / horizon ** 0.5))
    if schedule == "constant":
        if eps > 1:
            raise ConfigError(f"algorithm.eps={eps!r} is not allowed with algorithm.schedule=constant: the "
                              "consensus step must be in (0, 1]")
        return StepSizes(alpha=alpha, eps=eps)
    raise ConfigError(f"algorithm.schedule={schedule!r} is not allowed: choose one of paper, constant")


LR_DECAYS = ("none", "cosine", "step")


def scheduled_lr(lr: float, step: int, warmup_steps: int = 0, decay: str = "none", decay_every: int = 0,
                 decay_gamma: float = 0.1, horizon: int = 1) -> float:
    """The learning rate of step ``step`` (0-based): linear warm-up over ``warmup_steps``, then ``decay``:
    ``none``; ``step``, times ``decay_gamma`` every ``decay_every`` steps; ``cosine``, from ``lr`` down to 0
    at ``horizon`` steps (the run's length). Shared by the decentralized algorithms' local optimizer and the
    parameter-server AMSGrad (:func:`qtd.algorithms.lr_at`)."""
    if warmup_steps and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if decay == "step" and decay_every:
        return lr * decay_gamma ** ((step - warmup_steps) // decay_every)
    if decay == "cosine":
        span = max(horizon - warmup_steps, 1)
        return lr * 0.5 * (1.0 + math.cos(math.pi * min(step - warmup_steps, span) / span))
    return lr
