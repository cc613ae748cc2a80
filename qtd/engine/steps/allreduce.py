"""A collective step (all-reduce SGD, ``Runner.COLLECTIVE``): every node computes a batch-B gradient, the
gradients are averaged with one all-reduce (float32, as DDP sends them) and every model takes the same
step of the spec's rule."""

from __future__ import annotations

import time
from typing import Any

import torch

from ...algorithms import AlgorithmSpec, LocalOptimizer, LocalSGD, StepSizes
from ...comm import LinkModel, World, all_reduce_sum, ring_allreduce_bytes
from ...models import FlatModel
from .base import GradientSource, Step, StepStats, stats_from


class AllReduceStep(Step):
    def __init__(self, world: World, spec: AlgorithmSpec, flat: FlatModel, gradients: GradientSource,
                 sizes: StepSizes, link: LinkModel | None = None, local: LocalSGD = LocalSGD()) -> None:
        self.world, self.spec, self.flat, self.gradients, self.sizes = world, spec, flat, gradients, sizes
        self.local = LocalOptimizer(local, flat.params)
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
            x = self.flat.params
            direction = self.local.direction(self.flat.grads, x)
            x.copy_(self.spec.update(x, None, None, direction, self.local.sizes(self.sizes, iteration)))
        self._bytes_sent += ring_allreduce_bytes(self._nbytes, self.world.size)
        return stats_from(result, speed, wait_s, time.monotonic() - start)

    def regroup(self, world: World, view: Any, iteration: int) -> None:
        self.world = world  # the all-reduce averages over the survivors

    @property
    def bytes_sent(self) -> int:
        return self._bytes_sent

    def state_dict(self) -> dict[str, Any]:
        return {"bytes_sent": torch.tensor(self._bytes_sent, dtype=torch.int64), **self.local.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._bytes_sent = int(state["bytes_sent"])
        self.local.load_state_dict(state)
