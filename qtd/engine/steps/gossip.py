"""Synchronous gossip (QuanTimed-DSGD, Q-DSGD, DSGD, and every other algorithm whose spec runs as
``Runner.GOSSIP``): encode this node's model, exchange with the neighbours, compute the gradient, mix,
apply the spec's update rule. What differs between those algorithms is all in their specs."""

from __future__ import annotations

import time
from typing import Any

import torch

from ...algorithms import AlgorithmSpec, StepSizes, mix_neighbours
from ...comm import LinkModel, NeighbourExchange, World
from ...compress import decode_message, encode_message, message_nbytes
from ...models import FlatModel
from ...topology import NodeView
from .base import GradientSource, Step, StepStats, stats_from


class GossipStep(Step):
    """One message Q(x_i) to and from every neighbour per iteration, then x_i <- rule(x_i, sum_j w_ij z_j, ...).

    With ``overlap`` the exchange is posted before the gradient computation and waited for after it, so
    an iteration costs max(compute, communication).
    """

    def __init__(self, world: World, spec: AlgorithmSpec, flat: FlatModel, gradients: GradientSource,
                 view: NodeView, bits: int, sizes: StepSizes, overlap: bool, seed: int,
                 link: LinkModel | None = None) -> None:
        self.world, self.spec, self.flat, self.gradients, self.view = world, spec, flat, gradients, view
        self.bits, self.sizes, self.overlap, self.seed = bits, sizes, overlap, seed
        self.exchange = NeighbourExchange(world, view.neighbours, message_nbytes(flat.numel, bits), link)
        self._decoded = torch.empty(flat.numel, dtype=flat.params.dtype, device=flat.params.device)
        self._mixed = torch.empty_like(self._decoded)

    def _neighbour_models(self, messages: dict[int, torch.Tensor], iteration: int):
        for j, weight in zip(self.view.neighbours, self.view.neighbour_weights):
            decode_message(messages[j], expected_bits=self.bits, expected_count=self.flat.numel,
                           expected_sender=j, expected_iteration=iteration, out=self._decoded)
            yield self._decoded, weight

    def step(self, iteration: int) -> StepStats:
        start = time.monotonic()
        x = self.flat.params
        encode_message(x.detach(), self.bits, self.world.rank, iteration, seed=self.seed,
                       out=self.exchange.send_message)
        wait_before = self.exchange.wait_s
        pending = self.exchange.start(iteration)
        if self.overlap:
            result, speed = self.gradients.compute(iteration)
            messages = self.exchange.wait(pending)
        else:
            messages = self.exchange.wait(pending)
            result, speed = self.gradients.compute(iteration)
        mix_neighbours(self._neighbour_models(messages, iteration), out=self._mixed)
        with torch.no_grad():
            x.copy_(self.spec.update(x, self._mixed, self.view.self_weight, self.flat.grads, self.sizes))
        return stats_from(result, speed, self.exchange.wait_s - wait_before, time.monotonic() - start)

    @property
    def bytes_sent(self) -> int:
        return self.exchange.sent.total

    def state_dict(self) -> dict[str, Any]:
        return {"bytes_per_edge": torch.tensor([self.exchange.sent.per_edge[j] for j in self.view.neighbours],
                                               dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for j, count in zip(self.view.neighbours, state["bytes_per_edge"].tolist()):
            self.exchange.sent.per_edge[j] = int(count)
