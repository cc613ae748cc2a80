"""Synchronous gossip (QuanTimed-DSGD, Q-DSGD, DSGD, and every other algorithm whose spec runs as
``Runner.GOSSIP``): encode this node's model, exchange with the neighbours, compute the gradient, mix,
apply the spec's update rule. What differs between those algorithms is all in their specs."""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from ...algorithms import AlgorithmSpec, LocalOptimizer, LocalSGD, StepSizes
from ...comm import LinkModel, World
from ...models import FlatModel
from ...topology import NodeView
from .base import AutoDeadlineStep, GradientSource, StepStats, stats_from
from ...compress.message_codec import GridCodec
from .model_exchange import ModelExchange


class GossipStep(AutoDeadlineStep):
    """One message Q(x_i) to and from every neighbour per iteration, then x_i <- rule(x_i, sum_j w_ij z_j, ...).

    With ``overlap`` the exchange is posted before the gradient computation and waited for after it, so
    an iteration costs max(compute, communication). The rule steps along the local optimizer's direction
    (the gradient itself for plain SGD, the paper's rule).
    """

    def __init__(self, world: World, spec: AlgorithmSpec, flat: FlatModel, gradients: GradientSource,
                 views: NodeView | Sequence[NodeView], bits: int, sizes: StepSizes, overlap: bool, seed: int,
                 link: LinkModel | None = None, local: LocalSGD = LocalSGD(), block_size: int = 0) -> None:
        self.world, self.spec, self.flat, self.gradients = world, spec, flat, gradients
        self.bits, self.sizes, self.overlap, self.seed = bits, sizes, overlap, seed
        # one view per iteration of a period: a time-varying topology changes the peers every iteration
        self.exchange = ModelExchange(world, views, [GridCodec(flat.numel, bits, seed, block_size)], seed,
                                      flat.params.device, link)
        self.local = LocalOptimizer(local, flat.params)

    def step(self, iteration: int) -> StepStats:
        start = time.monotonic()
        x = self.flat.params
        wait_before = self.exchange.wait_s
        pending = self.exchange.post([x], iteration)
        if self.overlap:
            result, speed = self.gradients.compute(iteration)
            mixed, = self.exchange.mixed(pending)
        else:
            mixed, = self.exchange.mixed(pending)
            result, speed = self.gradients.compute(iteration)
        wait_s = self.exchange.wait_s - wait_before
        w_self, sizes = self.exchange.view(iteration).self_weight, self.local.sizes(self.sizes, iteration)
        log = self.gradients.observed(result, wait_s, self.overlap, self._rounding(iteration, w_self, sizes))
        with torch.no_grad():
            direction = self.local.direction(self.flat.grads, x)
            x.copy_(self.spec.update(x, mixed, w_self, direction, sizes))
        return stats_from(result, speed, wait_s, time.monotonic() - start, log=log)

    def _rounding(self, iteration: int, w_self: float, sizes) -> float:
        """deadline_s=auto: what this node's rounding adds to the network average's step, in gradient units,
        (1 - w_ii)^2 |Q(x_i) - x_i|^2 / alpha^2 (qtd.deadline.auto); 0 without auto."""
        if self.gradients.auto is None:
            return 0.0
        error = float((self.exchange.sent(iteration) - self.flat.params).double().square().sum())
        return (1 - w_self) ** 2 * error / sizes.alpha ** 2

    def regroup(self, world: World, view: NodeView, iteration: int) -> None:
        self.world = world
        self.exchange.regroup(world, view)

    @property
    def bytes_sent(self) -> int:
        return self.exchange.bytes_sent

    def state_dict(self) -> dict[str, Any]:
        return {**self.exchange.state_dict(), **self.local.state_dict(), **self.auto_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.exchange.load_state_dict(state)
        self.local.load_state_dict(state)
        self.load_auto_state(state)
