"""``algorithm.deadline_s: auto`` in the simulator: every node's controller (:mod:`qtd.deadline.auto`), fed
what a real node measures, agreeing at each evaluation from the same table a real run gathers (the mean of
the nodes' window gradients as the evaluation's all-reduce gives it)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..deadline.auto import MEAN_GRAD_SQ, AutoDeadline, seen_exchange_s


class NetworkDeadline:
    """One :class:`AutoDeadline` per node; all hold the same T_d."""

    def __init__(self, start_s: float, overlap: bool, nodes: int) -> None:
        self.overlap = overlap
        self.nodes = [AutoDeadline(start_s, overlap, nodes) for _ in range(nodes)]
        self.window: Tensor | None = None  # sum over the window's iterations of mean_i g_i

    @property
    def deadline_s(self) -> float:
        return self.nodes[0].deadline_s

    def record(self, counts: Sequence[int], noise: Sequence, grads: Tensor, step_s: float,
               rounding: Sequence[float] | Tensor) -> None:
        """One iteration of every node: its compute phase T_d, the exchange as it shows on the clock (the wait
        after the compute phase), its samples, noise estimate and rounding term."""
        deadline_s = self.deadline_s
        exchange = seen_exchange_s(deadline_s, step_s - deadline_s, self.overlap)
        mean = grads.mean(dim=0)
        self.window = mean.clone() if self.window is None else self.window.add_(mean)
        for i, node in enumerate(self.nodes):
            node.record(deadline_s, exchange, counts[i], noise[i], float(rounding[i]))

    def agree(self) -> float:
        """At an evaluation: the table a real run gathers (the mean gradient as its all-reduce gives it)."""
        rows = [node.values() for node in self.nodes]
        table = {key: np.array([row[key] for row in rows]) for key in rows[0]}
        iterations = self.nodes[0].window.iterations
        mean_sq = (float((self.window / iterations).double().square().sum()) if self.window is not None and iterations
                   else float("nan"))
        table[MEAN_GRAD_SQ] = np.full(len(self.nodes), mean_sq)
        for node in self.nodes:
            node.agree(table)
        self.window = None
        return self.deadline_s


def rounding_terms(x: Tensor, decoded: Tensor, self_weights: Tensor, alpha: float) -> Tensor:
    """Every node's (1 - w_ii)^2 |Q(x_i) - x_i|^2 / alpha^2, as a real QuanTimed node computes it."""
    with torch.no_grad():
        error = (decoded - x).double().square().sum(dim=1)
        return (1 - self_weights.double()) ** 2 * error / alpha ** 2
