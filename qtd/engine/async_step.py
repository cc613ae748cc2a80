"""One node's iteration of asynchronous DSGD, and the training clock it runs on.

The node computes a batch-B gradient at its own (emulated) pace, takes the newest model each neighbour
has delivered so far (never waiting for one), applies x_i <- sum_j w_ij x_j(latest) - alpha g_i
(:func:`qtd.algorithms.async_dsgd_update`) and hands its new model to the channel, which sends it
without blocking. The maths is in :mod:`qtd.algorithms`, the network in :mod:`qtd.comm`.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import torch

from ..algorithms import async_dsgd_update
from ..comm import AsyncNeighbourChannel
from ..compress import decode_message, encode_message
from ..models import FlatModel
from ..topology import NodeView
from .steps import GradientSource


class TrainingClock:
    """Seconds of training since the start: wall-clock time with evaluation pauses taken out.

    Wall times (``time.time()``) are what messages carry, so that a receiver can age a model produced
    by another process; :meth:`age` turns such a time into training seconds on this node.
    """

    def __init__(self, elapsed_s: float = 0.0) -> None:
        self._start = time.time() - elapsed_s
        self._paused_s = 0.0
        self._pause_started: float | None = None
        self._pauses: deque[tuple[float, float]] = deque(maxlen=256)

    def now(self) -> float:
        at = self._pause_started if self._pause_started is not None else time.time()
        return at - self._start - self._paused_s

    def pause(self) -> None:
        if self._pause_started is None:
            self._pause_started = time.time()

    def resume(self) -> None:
        if self._pause_started is not None:
            ended = time.time()
            self._paused_s += ended - self._pause_started
            self._pauses.append((self._pause_started, ended))
            self._pause_started = None

    def age(self, since_wall: float) -> float:
        """Training seconds between wall time ``since_wall`` and now (this node's pauses excluded)."""
        now = time.time()
        paused = sum(max(0.0, min(end, now) - max(begin, since_wall)) for begin, end in self._pauses)
        return max(0.0, now - since_wall - paused)


@dataclass(frozen=True)
class AsyncStepStats:
    """What one node did in one asynchronous iteration."""

    samples: int
    loss: float
    compute_s: float  # the paced gradient computation
    busy_s: float  # computing, pacing sleeps excluded
    channel_s: float  # inside the channel's poll and send (never waiting for a peer)
    codec_s: float  # decoding the new neighbour models, mixing, updating, encoding the new model
    iteration_s: float
    fresh: int  # neighbours whose model was newer than the one used last time
    staleness_iters: dict[int, int]  # per neighbour: newer versions of it known here, at the time of use
    staleness_s: dict[int, float]  # per neighbour: training seconds since the model used was produced
    speed: float | None


class AsyncDSGDStep:
    """Asynchronous DSGD at one node. Every node starts from the same model x_0, so until a neighbour's
    first message arrives its model is x_0 (version 0), exactly."""

    def __init__(self, rank: int, flat: FlatModel, gradients: GradientSource, view: NodeView, bits: int,
                 alpha: float, seed: int, channel: AsyncNeighbourChannel) -> None:
        self.rank, self.flat, self.gradients, self.view = rank, flat, gradients, view
        self.bits, self.alpha, self.seed = bits, alpha, seed
        self.channel = channel
        self.clock = TrainingClock()
        x0 = flat.params.detach()
        self.latest = {j: x0.clone() for j in view.neighbours}
        self.version = {j: 0 for j in view.neighbours}
        self.newest_known = {j: 0 for j in view.neighbours}
        self.produced_at = {j: time.time() for j in view.neighbours}
        self.finished_peers: set[int] = set()
        self._encoded = torch.empty(channel.message_nbytes, dtype=torch.uint8, device=x0.device)
        self._inbound = torch.empty(channel.message_nbytes, dtype=torch.uint8, device=x0.device)
        self._mixed = torch.empty_like(x0)

    def start(self, clock: TrainingClock) -> None:
        """Training starts now, on ``clock``: the shared initial model x_0 counts as produced now."""
        self.clock = clock
        self.produced_at = {j: time.time() for j in self.view.neighbours}

    def step(self, iteration: int) -> AsyncStepStats:
        """Iteration ``iteration`` (0-based): produces model version ``iteration + 1`` and sends it."""
        start = time.monotonic()
        result, speed = self.gradients.compute(iteration)
        codec_s = channel_s = 0.0
        t0 = time.monotonic()
        arrivals = self.channel.poll()
        channel_s += time.monotonic() - t0
        t0 = time.monotonic()
        fresh = 0
        for arrival in arrivals:
            j = arrival.peer
            self.newest_known[j] = max(self.newest_known[j], arrival.newest_known)
            if arrival.version <= self.version[j] and not arrival.final:
                continue
            message = arrival.message
            if message.device != self._inbound.device:
                message = self._inbound.copy_(message)
            decode_message(message, expected_bits=self.bits, expected_count=self.flat.numel, expected_sender=j,
                           expected_iteration=arrival.version, out=self.latest[j])
            fresh += arrival.version > self.version[j]
            self.version[j], self.produced_at[j] = arrival.version, arrival.produced_at
            if arrival.final:
                self.finished_peers.add(j)
        x = self.flat.params
        self._mixed.zero_()
        for j, weight in zip(self.view.neighbours, self.view.neighbour_weights):
            self._mixed.add_(self.latest[j], alpha=weight)
        with torch.no_grad():
            x.copy_(async_dsgd_update(x, self._mixed, self.view.self_weight, self.flat.grads, self.alpha))
        staleness_iters = {j: self.newest_known[j] - self.version[j] for j in self.view.neighbours}
        staleness_s = {j: self.clock.age(self.produced_at[j]) for j in self.view.neighbours}
        encode_message(x.detach(), self.bits, self.rank, iteration + 1, seed=self.seed, out=self._encoded)
        codec_s += time.monotonic() - t0
        t0 = time.monotonic()
        self.channel.send(self._encoded, iteration + 1)
        channel_s += time.monotonic() - t0
        return AsyncStepStats(samples=result.samples, loss=result.mean_loss, compute_s=result.compute_s,
                              busy_s=result.busy_s, channel_s=channel_s, codec_s=codec_s,
                              iteration_s=time.monotonic() - start, fresh=fresh, staleness_iters=staleness_iters,
                              staleness_s=staleness_s, speed=speed)

    def finish(self, iterations_done: int) -> None:
        """Send the final model (version ``iterations_done``), flagged FINAL: this node stops updating."""
        encode_message(self.flat.params.detach(), self.bits, self.rank, iterations_done, seed=self.seed,
                       out=self._encoded)
        self.channel.finish(self._encoded, iterations_done)

    @property
    def bytes_sent(self) -> int:
        return self.channel.sent.total
