"""Difference gossip (CHOCO-SGD, QuanTimed-CHOCO, every spec that runs as ``Runner.DIFFERENCE_GOSSIP``):
send Q(x_i - x̂_i), add the decoded differences to the public copies, step along the copies' consensus
direction (:mod:`qtd.algorithms.choco`). The gradient is computed in fixed batches or until the deadline,
as the spec says."""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from ...algorithms import AlgorithmSpec, LocalOptimizer, LocalSGD, PublicCopies, StepSizes
from ...comm import LinkModel, World
from ...compress.message_codec import GridCodec, SparseCodec
from ...models import FlatModel
from ...topology import NodeView
from .base import AutoDeadlineStep, GradientSource, StepStats, stats_from
from .model_exchange import ModelExchange


class DifferenceGossipStep(AutoDeadlineStep):
    """One compressed difference to and from every neighbour per iteration.

    With ``overlap`` the difference of the current model x_i - x̂_i is sent while the gradient at x_i is
    computed, and x_i <- x_i - alpha g + gamma sum_j w_ij (x̂_j - x̂_i): an iteration costs max(compute,
    communication). Without it, CHOCO-SGD's own order: the gradient step first, then the difference of the
    stepped model is exchanged and the consensus step applied to it (compute + communication).
    """

    def __init__(self, world: World, spec: AlgorithmSpec, flat: FlatModel, gradients: GradientSource,
                 views: NodeView | Sequence[NodeView], codec: GridCodec | SparseCodec, sizes: StepSizes,
                 overlap: bool, link: LinkModel | None = None, local: LocalSGD = LocalSGD()) -> None:
        views = (views,) if isinstance(views, NodeView) else tuple(views)
        if len(views) != 1:  # the config refuses it first: public copies are of one fixed set of neighbours
            raise ValueError(f"{spec.name} keeps public copies of fixed neighbours: it needs a static topology")
        view = views[0]
        self.world, self.spec, self.flat, self.gradients, self.view = world, spec, flat, gradients, view
        self.sizes, self.overlap = sizes, overlap
        self.exchange = ModelExchange(world, view, [codec], 0, flat.params.device, link)  # the codec has the seed
        self.copies = PublicCopies(flat.params.detach(), view.self_weight)
        self.local = LocalOptimizer(local, flat.params)

    def _gradient_step(self, iteration: int) -> tuple[Any, Any, StepSizes]:
        result, speed = self.gradients.compute(iteration)
        x = self.flat.params
        with torch.no_grad():
            direction = self.local.direction(self.flat.grads, x)
        return (result, speed), direction, self.local.sizes(self.sizes, iteration)

    def _exchanged(self, pending, iteration: int) -> torch.Tensor:
        mixed, = self.exchange.mixed(pending)
        self.copies.receive(self.exchange.sent(iteration), mixed)
        return self.copies.direction()

    def step(self, iteration: int) -> StepStats:
        start = time.monotonic()
        x = self.flat.params
        wait_before = self.exchange.wait_s
        w_self = self.view.self_weight
        if self.overlap:
            pending = self.exchange.post([self.copies.difference(x.detach())], iteration)
            (result, speed), direction, sizes = self._gradient_step(iteration)
            consensus = self._exchanged(pending, iteration)
            with torch.no_grad():
                x.copy_(self.spec.update(x, consensus, w_self, direction, sizes))
        else:
            (result, speed), direction, sizes = self._gradient_step(iteration)
            with torch.no_grad():
                x.copy_(self.spec.update(x, 0.0, w_self, direction, sizes))  # the gradient half
            pending = self.exchange.post([self.copies.difference(x.detach())], iteration)
            consensus = self._exchanged(pending, iteration)
            with torch.no_grad():
                x.copy_(self.spec.update(x, consensus, w_self, 0.0, sizes))  # the consensus half
        wait_s = self.exchange.wait_s - wait_before
        # the consensus step leaves the network average unchanged: no rounding term (qtd.deadline.auto)
        log = self.gradients.observed(result, wait_s, self.overlap)
        return stats_from(result, speed, wait_s, time.monotonic() - start, log=log)

    def regroup(self, world: World, view: NodeView, iteration: int) -> None:
        """The survivors' weights differ, and s_i = sum_j w_ij x̂_j is kept as one sum: neighbours swap their
        public copies once, exactly (float32), and s_i is summed anew, so no copy restarts from zero."""
        self.world, self.view = world, view
        self.exchange.regroup(world, view)
        copies = ModelExchange(world, view, [(self.flat.numel, 32)], 0, self.flat.params.device, None)
        mixed, = copies.mixed(copies.post([self.copies.own], iteration))
        self.copies.neighbours.copy_(mixed)
        self.copies.others_weight = 1 - view.self_weight
        self.exchange._carried += copies.bytes_sent

    @property
    def bytes_sent(self) -> int:
        return self.exchange.bytes_sent

    def state_dict(self) -> dict[str, Any]:
        return {**self.exchange.state_dict(), **self.local.state_dict(), **self.copies.state_dict(),
                **self.auto_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.exchange.load_state_dict(state)
        self.local.load_state_dict(state)
        self.copies.load_state_dict(state)
        self.load_auto_state(state)
