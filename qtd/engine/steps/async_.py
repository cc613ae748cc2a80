"""Asynchronous DSGD (``Runner.ASYNC``): one node's iteration, at its own pace, never waiting.

The node computes a batch-B gradient at its own (emulated) pace, takes the newest model each neighbour
has delivered so far, applies the spec's rule x_i <- sum_j w_ij x_j(latest) - alpha g_i, and hands its
new model to the channel, which sends it without blocking. It also keeps the staleness of the neighbour
models it used, which the driver gathers at every evaluation. The maths is in :mod:`qtd.algorithms`,
the network in :mod:`qtd.comm` (:class:`qtd.comm.AsyncNeighbourChannel`).
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np
import torch

from ...algorithms import AlgorithmSpec, LocalOptimizer, LocalSGD, StepSizes, mix_neighbours
from ...comm import AsyncNeighbourChannel, World, barrier
from ...compress.message_codec import GridCodec
from ...models import FlatModel
from ...topology import NodeView
from ..clock import TrainingClock
from .base import GradientSource, Step, StepStats, stats_from


class Staleness:
    """Sums and maxima of the staleness of the neighbour models used: since the last evaluation, and in all."""

    def __init__(self) -> None:
        self.iters_sum = self.s_sum = self.s_max = 0.0
        self.count = self.iters_max = 0
        self.total_iters = self.total_s = 0.0
        self.total_count = 0

    def add(self, iters: dict[int, int], seconds: dict[int, float]) -> None:
        for j, stale in iters.items():
            self.iters_sum += stale
            self.s_sum += seconds[j]
            self.count += 1
            self.s_max = max(self.s_max, seconds[j])
            self.iters_max = max(self.iters_max, stale)
            self.total_iters += stale
            self.total_s += seconds[j]
            self.total_count += 1

    def reset_interval(self) -> None:
        self.iters_sum = self.s_sum = self.s_max = 0.0
        self.count = self.iters_max = 0


class AsyncDSGDStep(Step):
    """Asynchronous DSGD at one node. Every node starts from the same model x_0, so until a neighbour's
    first message arrives its model is x_0 (version 0), exactly."""

    def __init__(self, world: World, spec: AlgorithmSpec, flat: FlatModel, gradients: GradientSource, view: NodeView,
                 bits: int, sizes: StepSizes, seed: int, channel: AsyncNeighbourChannel,
                 local: LocalSGD = LocalSGD(), block_size: int = 0) -> None:
        self.world, self.rank = world, world.rank
        self.spec, self.flat, self.gradients, self.view = spec, flat, gradients, view
        self.bits, self.sizes, self.seed = bits, sizes, seed
        self.codec = GridCodec(flat.numel, bits, seed, block_size)
        self.channel = channel
        self.clock = TrainingClock()
        x0 = flat.params.detach()
        self.latest = {j: x0.clone() for j in view.neighbours}
        self.version = {j: 0 for j in view.neighbours}
        self.newest_known = {j: 0 for j in view.neighbours}
        self.produced_at = {j: time.time() for j in view.neighbours}
        self.finished_peers: set[int] = set()
        self.staleness = Staleness()
        self._encoded = torch.empty(channel.message_nbytes, dtype=torch.uint8, device=x0.device)
        self._inbound = torch.empty(channel.message_nbytes, dtype=torch.uint8, device=x0.device)
        self._mixed = torch.empty_like(x0)
        self.local = LocalOptimizer(local, x0)

    def ready(self) -> None:
        barrier(self.world, "starting the asynchronous run")  # every training clock starts together

    def start(self, clock: TrainingClock) -> None:
        """Training starts now, on ``clock``: the shared initial model x_0 counts as produced now."""
        self.clock = clock
        self.produced_at = {j: time.time() for j in self.view.neighbours}

    def _take_arrivals(self, arrivals) -> int:
        """Decode every newer neighbour model that arrived; returns how many neighbours sent a newer one."""
        fresh = 0
        for arrival in arrivals:
            j = arrival.peer
            self.newest_known[j] = max(self.newest_known[j], arrival.newest_known)
            if arrival.version <= self.version[j] and not arrival.final:
                continue
            message = arrival.message
            if message.device != self._inbound.device:
                message = self._inbound.copy_(message)
            self.codec.decode(message, j, arrival.version, self.latest[j])
            fresh += arrival.version > self.version[j]
            self.version[j], self.produced_at[j] = arrival.version, arrival.produced_at
            if arrival.final:
                self.finished_peers.add(j)
        return fresh

    def step(self, iteration: int) -> StepStats:
        """Iteration ``iteration`` (0-based): produces model version ``iteration + 1`` and sends it."""
        start = time.monotonic()
        result, speed = self.gradients.compute(iteration)
        t0 = time.monotonic()
        arrivals = self.channel.poll()
        channel_s = time.monotonic() - t0
        t0 = time.monotonic()
        fresh = self._take_arrivals(arrivals)
        x = self.flat.params
        mix_neighbours(((self.latest[j], w) for j, w in zip(self.view.neighbours, self.view.neighbour_weights)),
                       out=self._mixed)
        with torch.no_grad():
            direction = self.local.direction(self.flat.grads, x)
            x.copy_(self.spec.update(x, self._mixed, self.view.self_weight, direction,
                                     self.local.sizes(self.sizes, iteration)))
        stale_iters = {j: self.newest_known[j] - self.version[j] for j in self.view.neighbours}
        stale_s = {j: self.clock.age(self.produced_at[j]) for j in self.view.neighbours}
        self.staleness.add(stale_iters, stale_s)
        self.codec.encode(x.detach(), self.rank, iteration + 1, self._encoded)
        codec_s = time.monotonic() - t0
        t0 = time.monotonic()
        self.channel.send(self._encoded, iteration + 1)
        channel_s += time.monotonic() - t0  # polling and posting: the channel never waits for a peer
        return stats_from(result, speed, channel_s, time.monotonic() - start,
                          log=_log(stats=stale_iters, seconds=stale_s, codec_s=codec_s, fresh=fresh,
                                   replaced=self.channel.replaced),
                          scalars=_scalars(stale_iters, stale_s))

    def finish(self, iterations_done: int) -> None:
        """Send the final model (version ``iterations_done``), flagged FINAL: this node stops updating."""
        self.codec.encode(self.flat.params.detach(), self.rank, iterations_done, self._encoded)
        self.channel.finish(self._encoded, iterations_done)

    def close(self) -> None:
        self.channel.close()

    def abort(self) -> None:
        self.channel.abort()

    @property
    def bytes_sent(self) -> int:
        return self.channel.sent.total

    def state_dict(self) -> dict[str, Any]:
        neighbours = list(self.view.neighbours)
        return {"neighbours": torch.tensor(neighbours, dtype=torch.int64),
                "neighbour_versions": torch.tensor([self.version[j] for j in neighbours], dtype=torch.int64),
                "neighbour_models": torch.stack([self.latest[j].cpu() for j in neighbours]) if neighbours
                else torch.zeros(0), **self.local.state_dict()}

    # -- what evaluations and the summary gather ------------------------------------------------------

    def eval_values(self) -> dict[str, float]:
        s = self.staleness
        return {"stale_iters_sum": s.iters_sum, "stale_s_sum": s.s_sum, "stale_count": s.count,
                "stale_s_max": s.s_max, "stale_iters_max": s.iters_max, "replaced": self.channel.replaced,
                "total_stale_iters": s.total_iters, "total_stale_s": s.total_s,
                "total_stale_count": s.total_count}

    def eval_columns(self, table: Mapping[str, np.ndarray]) -> dict[str, Any]:
        self.staleness.reset_interval()  # the interval ends at this evaluation
        uses = max(table["stale_count"].sum(), 1.0)
        return {"iterations_min": int(table["iterations"].min()), "iterations_max": int(table["iterations"].max()),
                "nodes_finished": int(table["finished"].sum()),
                "staleness_iters_mean": float(table["stale_iters_sum"].sum() / uses),
                "staleness_iters_max": int(table["stale_iters_max"].max()),
                "staleness_s_mean": float(table["stale_s_sum"].sum() / uses),
                "staleness_s_max": float(table["stale_s_max"].max())}

    def eval_scalars(self, columns: Mapping[str, Any]) -> dict[str, float]:
        return {f"async/{key}": columns[key] for key in ("staleness_iters_mean", "staleness_s_mean",
                                                         "staleness_s_max", "iterations_min", "iterations_max")}

    def summary_values(self, table: Mapping[str, np.ndarray]) -> dict[str, Any]:
        uses = max(table["total_stale_count"].sum(), 1.0)
        return {"iterations_per_node": [int(v) for v in table["iterations"]],
                "finish_time_s_per_node": [round(float(v), 4) for v in table["finish_s"]],
                "replaced_messages": int(table["replaced"].sum()),
                "staleness_iters_mean": float(table["total_stale_iters"].sum() / uses),
                "staleness_s_mean": float(table["total_stale_s"].sum() / uses),
                "max_in_flight": self.channel.max_in_flight}


def _log(stats: dict[int, int], seconds: dict[int, float], codec_s: float, fresh: int, replaced: int) -> dict:
    return {"codec_s": codec_s, "fresh": fresh, "staleness_iters": {str(j): v for j, v in stats.items()},
            "staleness_s": {str(j): round(v, 6) for j, v in seconds.items()}, "replaced": replaced}


def _scalars(stale_iters: dict[int, int], stale_s: dict[int, float]) -> dict[str, float]:
    scalars: dict[str, float] = {}
    if stale_s:
        scalars["node/staleness_iters_mean"] = sum(stale_iters.values()) / len(stale_iters)
        scalars["node/staleness_s_mean"] = sum(stale_s.values()) / len(stale_s)
    for j in stale_s:
        scalars[f"node/staleness_iters/from_{j:03d}"] = stale_iters[j]
        scalars[f"node/staleness_s/from_{j:03d}"] = stale_s[j]
    return scalars
