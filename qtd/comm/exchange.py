"""Neighbour exchange: one wire message to and from every graph neighbour per iteration."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.distributed as dist

from ..errors import PeerError
from .group import World, _short, peer_failure, wait_works
from ..costs import LinkModel

_STAMP_BYTES = 8  # float64 send time, appended only when links are emulated; not part of the message


@dataclass
class PendingExchange:
    works: list[tuple[object, int | None]]  # (work, the peer it waits for, where one)
    iteration: int
    posted_at: float


@dataclass
class ByteCounter:
    """Bytes that really crossed the wire from this node, per neighbour and in total (headers included)."""

    per_edge: dict[int, int] = field(default_factory=dict)
    messages: int = 0

    @property
    def total(self) -> int:
        return sum(self.per_edge.values())

    def add(self, peer: int, nbytes: int) -> None:
        self.per_edge[peer] = self.per_edge.get(peer, 0) + nbytes
        self.messages += 1


class NeighbourExchange:
    """Sends this node's message to each neighbour and receives one from each, every iteration.

    Not a collective: only this node and its neighbours take part, and each of them must call
    :meth:`start` and :meth:`wait` once per iteration. All receives and sends are posted before any wait,
    so no graph can deadlock on send order; receive buffers are allocated once.
    """

    def __init__(self, world: World, neighbours: Sequence[int], message_nbytes: int,
                 link: LinkModel | None = None) -> None:
        self.world = world
        self.neighbours = tuple(neighbours)
        self.message_nbytes = message_nbytes
        self.link = link if link is not None and link.enabled else None
        extra = _STAMP_BYTES if self.link else 0
        self._send = torch.zeros(message_nbytes + extra, dtype=torch.uint8, device=world.device)
        self._recv = {j: torch.zeros(message_nbytes + extra, dtype=torch.uint8, device=world.device)
                      for j in self.neighbours}
        self.sent = ByteCounter({j: 0 for j in self.neighbours})
        self.received = ByteCounter({j: 0 for j in self.neighbours})
        self.wait_s = 0.0  # time spent blocked in wait(), emulated link delay included

    @property
    def send_message(self) -> torch.Tensor:
        """The buffer to encode this node's message into before :meth:`start`."""
        return self._send[: self.message_nbytes]

    def start(self, iteration: int) -> PendingExchange:
        """Post every receive, then every send, of the message in :attr:`send_message`."""
        if self.link:
            stamp = torch.tensor([time.time()], dtype=torch.float64).view(torch.uint8)
            self._send[self.message_nbytes:].copy_(stamp)
        works: list[tuple[object, int | None]] = []
        use_batch = self.world.backend == "nccl"
        if use_batch and self.neighbours:
            ranks = {j: self.world.group_rank(j) for j in self.neighbours}
            ops = [dist.P2POp(dist.irecv, self._recv[j], ranks[j]) for j in self.neighbours]
            ops += [dist.P2POp(dist.isend, self._send, ranks[j]) for j in self.neighbours]
            try:
                batch = dist.batch_isend_irecv(ops)
            except RuntimeError as exc:
                raise PeerError(f"iteration {iteration}: posting the exchange with nodes "
                                f"{list(self.neighbours)} failed ({_short(exc)})") from None
            works = [(w, None) for w in batch]
        else:
            for op, verb in ((dist.irecv, "receive from"), (dist.isend, "send to")):
                for j in self.neighbours:
                    buffer = self._recv[j] if op is dist.irecv else self._send
                    try:
                        works.append((op(buffer, self.world.group_rank(j)), j))
                    except RuntimeError as exc:
                        raise peer_failure(self.world, f"iteration {iteration}: cannot {verb} node {j}", j,
                                           exc) from None
        for j in self.neighbours:
            self.sent.add(j, self.message_nbytes)
        return PendingExchange(works=works, iteration=iteration, posted_at=time.monotonic())

    def wait(self, pending: PendingExchange) -> dict[int, torch.Tensor]:
        """Block (at most comm.timeout_s) until every message arrived and every send finished; with
        emulated links, also until each message's emulated arrival time. Returns neighbour -> message."""
        started = time.monotonic()
        wait_works(pending.works, self.world,
                   f"neighbour exchange at iteration {pending.iteration} on node {self.world.node}")
        if self.link:
            delay = self.link.delay_s(self.message_nbytes)
            arrivals = [float(self._recv[j][self.message_nbytes:].cpu().clone().view(torch.float64)[0]) + delay
                        for j in self.neighbours]
            remaining = max(arrivals, default=0.0) - time.time()
            if remaining > 0:
                time.sleep(remaining)
        for j in self.neighbours:
            self.received.add(j, self.message_nbytes)
        self.wait_s += time.monotonic() - started
        return {j: self._recv[j][: self.message_nbytes] for j in self.neighbours}
