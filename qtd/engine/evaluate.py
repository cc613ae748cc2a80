"""The real runs' evaluation collective: the network's model evaluated, every node's counters gathered.

:class:`Evaluator` averages the nodes' models (one all-reduce, counted apart from the algorithm's bytes
as ``eval_bytes``) and evaluates the average on this node's shard of the evaluation set;
:func:`gather_table` collects every node's counters into one table, from which
:func:`qtd.engine.points.point_from_table` makes the evaluation point every node agrees on.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import Tensor

from ..comm import World, all_reduce_sum, ring_allreduce_bytes
from ..data import ArrayDataset
from ..models import FlatModel
from ..deadline.auto import MEAN_GRAD_SQ
from .points import evaluate_sum


def gather_table(values: Mapping[str, float], world: World, what: str) -> dict[str, np.ndarray]:
    """Collective: every node contributes the same keys; returns key -> one float64 value per node."""
    keys = list(values)
    k = len(keys)
    table = torch.zeros(world.size * k, dtype=torch.float64, device=world.device)
    table[world.rank * k:(world.rank + 1) * k] = torch.tensor([float(values[key]) for key in keys],
                                                              dtype=torch.float64)
    all_reduce_sum(table, world, what)
    rows = table.cpu().numpy().reshape(world.size, k)
    return {key: rows[:, i] for i, key in enumerate(keys)}


class Evaluator:
    """Collective: every node calls it at the same evaluation point.

    ``replicated=False`` (decentralized runs): the network-average model is evaluated, and the consensus
    error is the mean squared distance of the nodes' models from it. ``replicated=True`` (parameter-server
    mode): every rank holds a replica of one model, which is evaluated as it is; the "consensus error" is
    the replicas' drift, computed in float64 so that identical replicas give exactly 0.
    """

    def __init__(self, world: World, eval_set: ArrayDataset, eval_indices: Tensor, average: FlatModel,
                 replicated: bool = False) -> None:
        self.world, self.eval_set, self.replicated = world, eval_set, replicated
        self.average = average
        self.shard = eval_indices[world.rank::world.size]

    def __call__(self, flat: FlatModel, what: str, gradient: Tensor | None = None) -> tuple[dict[str, float], int]:
        """This node's (deviation, loss_sum, correct, count) and the evaluation bytes it sent. A ``gradient``
        (a vector of the model's size) travels in the same all-reduce as the models, and ``auto_mean_grad_sq``
        is the square of its mean over the nodes (``deadline_s: auto``, :mod:`qtd.deadline.auto`)."""
        world = self.world
        extra: dict[str, float] = {}
        if gradient is not None and not self.replicated:
            x = flat.params.detach()
            both = all_reduce_sum(torch.cat([x, gradient.detach()]), world, what).div_(world.size)
            average = self.average.params
            average.copy_(both[:x.numel()])
            extra[MEAN_GRAD_SQ] = float(both[x.numel():].double().square().sum())
            module = self.average.module
        elif self.replicated:
            x = flat.params.detach().to(torch.float64)
            average = all_reduce_sum(x.clone(), world, what).div_(world.size)
            module = flat.module
        else:
            x = flat.params.detach()
            average = self.average.params
            average.copy_(x)
            all_reduce_sum(average, world, what)
            average.div_(world.size)
            module = self.average.module
        sent = ring_allreduce_bytes(x.numel() * x.element_size() * (2 if extra else 1), world.size)
        if not self.replicated:
            sent += self._average_buffers(flat, what)
        deviation = float(((x - average) ** 2).sum())
        loss_sum, correct, count = evaluate_sum(module, self.eval_set, self.shard, world.device)
        return {"deviation": deviation, "loss_sum": loss_sum, "correct": correct, "count": count, **extra}, sent

    def _average_buffers(self, flat: FlatModel, what: str) -> int:
        """The nodes' mean float buffers (BatchNorm's running statistics) into the evaluated average model, so
        it is evaluated with the statistics model.pt holds, not the initial ones; the bytes this node sent."""
        pairs = [(mine, theirs) for mine, theirs in zip(flat.module.buffers(), self.average.module.buffers())
                 if mine.is_floating_point()]
        if not pairs:
            return 0
        total = torch.cat([mine.detach().reshape(-1).to(torch.float32) for mine, _ in pairs])
        all_reduce_sum(total, self.world, f"{what} (buffers)")
        total.div_(self.world.size)
        for (_, theirs), piece in zip(pairs, total.split([mine.numel() for mine, _ in pairs])):
            theirs.copy_(piece.view_as(theirs))
        return ring_allreduce_bytes(total.numel() * total.element_size(), self.world.size)
