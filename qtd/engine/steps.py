"""One node's iteration for each synchronous algorithm: gradients, exchange, the pure update rule.

A step object holds what persists between iterations (buffers, timers, counters); the maths is in
:mod:`qtd.algorithms`, the network in :mod:`qtd.comm`, the deadline loop in :mod:`qtd.deadline`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from ..algorithms import dsgd_update, quantimed_update, sgd_update
from ..compress import decode_message, encode_message, message_nbytes
from ..comm import LinkModel, NeighbourExchange, World, all_reduce_sum, ring_allreduce_bytes
from ..deadline import DeadlineTimer, GradientResult, compute_fixed_batch
from ..models import FlatModel
from ..topology import NodeView

StepFn = Callable[[int], float]


@dataclass(frozen=True)
class StepStats:
    """What one node did in one iteration."""

    samples: int
    loss: float  # mean training loss over the samples computed (nan if none)
    compute_s: float
    busy_s: float  # computing, pacing sleeps excluded
    micro_batches: int
    wait_s: float  # blocked on the network after computing (emulated link time included)
    iteration_s: float
    bytes_sent: int  # algorithm traffic sent this iteration, headers included
    speed: float | None  # the emulated speed V_{i,t}, if stragglers are emulated


def _finish_gradient(flat: FlatModel, result: GradientResult) -> None:
    """Turn the summed gradient into the mean over the samples computed (zero if none)."""
    if result.samples:
        flat.grads.div_(result.samples)
    else:
        flat.grads.zero_()


class GradientSource:
    """Computes this node's gradient into ``flat.grads``: a fixed batch, or micro-batches until a deadline."""

    def __init__(self, flat: FlatModel, step: StepFn, device: torch.device, speed_of: Callable[[int], float | None],
                 batch_size: int, deadline_s: float | None, micro_batch_size: int) -> None:
        self.flat, self.step, self.device, self.speed_of = flat, step, device, speed_of
        self.batch_size = batch_size
        self.timer = DeadlineTimer(deadline_s, micro_batch_size, device) if deadline_s else None

    def compute(self, iteration: int) -> tuple[GradientResult, float | None]:
        speed = self.speed_of(iteration)
        self.flat.grads.zero_()
        if self.timer is not None:
            result = self.timer.run(self.step, speed)
        else:
            result = compute_fixed_batch(self.step, self.batch_size, speed, self.device)
        _finish_gradient(self.flat, result)
        return result, speed


class GossipStep:
    """QuanTimed-DSGD, Q-DSGD and DSGD: encode Q(x_i), exchange with neighbours, compute, update.

    ``consensus`` selects the rule: "quantized" (QuanTimed / Q-DSGD, consensus step eps) or "exact"
    (DSGD, x <- sum_j w_ij x_j - alpha g, with 16- or 32-bit copies on the wire).
    """

    def __init__(self, world: World, flat: FlatModel, gradients: GradientSource, view: NodeView, bits: int,
                 alpha: float, eps: float, consensus: str, overlap: bool, seed: int,
                 link: LinkModel | None = None) -> None:
        self.world, self.flat, self.gradients, self.view = world, flat, gradients, view
        self.bits, self.alpha, self.eps, self.seed = bits, alpha, eps, seed
        self.consensus, self.overlap = consensus, overlap
        nbytes = message_nbytes(flat.numel, bits)
        self.exchange = NeighbourExchange(world, view.neighbours, nbytes, link)
        self._decoded = torch.empty(flat.numel, dtype=flat.params.dtype, device=flat.params.device)
        self._mixed = torch.empty_like(self._decoded)

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
        self._mixed.zero_()
        for j, weight in zip(self.view.neighbours, self.view.neighbour_weights):
            decode_message(messages[j], expected_bits=self.bits, expected_count=self.flat.numel,
                           expected_sender=j, expected_iteration=iteration, out=self._decoded)
            self._mixed.add_(self._decoded, alpha=weight)
        with torch.no_grad():
            if self.consensus == "exact":
                new = dsgd_update(x, self._mixed, self.view.self_weight, self.flat.grads, self.alpha)
            else:
                new = quantimed_update(x, self._mixed, self.view.self_weight, self.flat.grads, self.alpha, self.eps)
            x.copy_(new)
        return StepStats(samples=result.samples, loss=result.mean_loss, compute_s=result.compute_s,
                         busy_s=result.busy_s, micro_batches=result.micro_batches,
                         wait_s=self.exchange.wait_s - wait_before, iteration_s=time.monotonic() - start,
                         bytes_sent=len(self.view.neighbours) * self.exchange.message_nbytes, speed=speed)

    @property
    def bytes_sent(self) -> int:
        return self.exchange.sent.total

    @property
    def bytes_per_edge(self) -> dict[int, int]:
        return dict(self.exchange.sent.per_edge)

    def state_dict(self) -> dict[str, Any]:
        return {"bytes_per_edge": torch.tensor([self.exchange.sent.per_edge[j] for j in self.view.neighbours],
                                               dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for j, count in zip(self.view.neighbours, state["bytes_per_edge"].tolist()):
            self.exchange.sent.per_edge[j] = int(count)


class AllReduceStep:
    """All-reduce SGD: every node computes a batch-B gradient, the gradients are averaged with one
    all-reduce (float32, as DDP sends them), every model takes the same SGD step."""

    def __init__(self, world: World, flat: FlatModel, gradients: GradientSource, lr: float,
                 link: LinkModel | None = None) -> None:
        self.world, self.flat, self.gradients, self.lr = world, flat, gradients, lr
        self.link = link if link is not None and link.enabled else None
        self._nbytes = flat.numel * flat.grads.element_size()
        self._bytes_sent = 0

    def step(self, iteration: int) -> StepStats:
        start = time.monotonic()
        result, speed = self.gradients.compute(iteration)
        wait_start = time.monotonic()
        all_reduce_sum(self.flat.grads, self.world, f"gradient all-reduce at iteration {iteration}")
        self.flat.grads.div_(self.world.size)
        if self.link:
            remaining = wait_start + self.link.ring_allreduce_s(self._nbytes, self.world.size) - time.monotonic()
            if remaining > 0:
                time.sleep(remaining)
        wait_s = time.monotonic() - wait_start
        with torch.no_grad():
            self.flat.params.copy_(sgd_update(self.flat.params, self.flat.grads, self.lr))
        sent = ring_allreduce_bytes(self._nbytes, self.world.size)
        self._bytes_sent += sent
        return StepStats(samples=result.samples, loss=result.mean_loss, compute_s=result.compute_s,
                         busy_s=result.busy_s, micro_batches=result.micro_batches, wait_s=wait_s,
                         iteration_s=time.monotonic() - start, bytes_sent=sent, speed=speed)

    @property
    def bytes_sent(self) -> int:
        return self._bytes_sent

    @property
    def bytes_per_edge(self) -> dict[int, int]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"bytes_sent": torch.tensor(self._bytes_sent, dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._bytes_sent = int(state["bytes_sent"])
