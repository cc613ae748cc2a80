"""Asynchronous point-to-point channel: models go to and come from graph neighbours at each node's own pace.

Why threads. Gloo point-to-point works only complete inside ``wait()`` (``is_completed()`` stays False
even after the data has landed), a ``wait(timeout)`` that expires closes *every* pair of the gloo context
(the whole group is dead afterwards: "Application timeout caused pair closure"), and a gloo send only
completes once the receiver has posted its receive. So the training loop cannot poll gloo works itself.
Instead every neighbour j gets two daemon threads that block in ``wait()`` (which releases the GIL):

- a receive thread that always has one receive from j posted, and
- a send thread that posts this node's newest model to j, at most ``max_in_flight`` at a time.

The training loop only touches Python queues under a lock: :meth:`AsyncNeighbourChannel.send` hands a
model over and returns at once (a newer model replaces one not yet posted), :meth:`poll` returns the
newest model that has become usable from each neighbour, without ever waiting for one.

Every message carries a 40-byte trailer after the encoded model: the model's version (the sender's
iteration count), the sender's newest version when it was posted, flags (FINAL), the time the model
was produced and the time it becomes usable at the receiver (emulated links). Bytes are counted with
the trailer, as they cross the wire.

A clean end: :meth:`finish` sends this node's final model flagged FINAL; a receive thread stops after
the FINAL message of its neighbour, a send thread after its FINAL message completed, so every posted
send meets a posted receive and no receive is left open. :meth:`close` joins the threads (bounded).

The channel runs on its own gloo group over CPU tensors (on NCCL worlds too: NCCL executes
point-to-point operations in stream order, which cannot express "receive whenever it comes").
Not a collective, except its constructor when it creates that group (every rank must build one).
"""

from __future__ import annotations

import datetime
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist

from ..costs import LinkModel
from ..errors import PeerError
from .async_message import FLAG_FINAL, TRAILER_BYTES, Arrival, pack_trailer, read_trailer
from .exchange import ByteCounter
from .group import World, _short

_TAG = 0x51D  # distinct from anything else posted on the group
_ECHO_GRACE_S = 1.0


@dataclass
class _Held:
    buffer: torch.Tensor
    version: int
    newest_known: int
    flags: int
    produced_at: float
    available_at: float


@dataclass
class _Posted:
    buffer: torch.Tensor
    work: object
    available_at: float
    done: bool = False


@dataclass
class _Pending:
    buffer: torch.Tensor
    version: int
    produced_at: float
    final: bool


class _Peer:
    """Everything about one neighbour; guarded by the channel's lock."""

    def __init__(self, rank: int, nbytes: int, max_in_flight: int, lock: threading.Lock) -> None:
        self.rank = rank
        # send side: max_in_flight posted + one pending
        self.send_free = [torch.zeros(nbytes, dtype=torch.uint8) for _ in range(max_in_flight + 1)]
        self.pending: _Pending | None = None
        self.posted: list[_Posted] = []
        self.link_free_at = 0.0
        self.sent_final = False
        self.send_done = False
        # receive side: held (arrived, maybe not usable yet) + one being received + one handed out
        self.recv_free = [torch.zeros(nbytes, dtype=torch.uint8) for _ in range(max_in_flight + 3)]
        self.inbox: deque[_Held] = deque()
        self.handed_out: torch.Tensor | None = None
        self.newest_known = 0
        self.skipped = 0
        self.got_final = False
        self.recv_done = False
        self.send_cond = threading.Condition(lock)
        self.recv_cond = threading.Condition(lock)


class AsyncNeighbourChannel:
    """Non-blocking model exchange with the graph neighbours (see the module docstring).

    ``message_nbytes`` is the encoded model's size (the same every message); ``link`` emulates a link
    per neighbour: a message departs when the link is free, occupies it for bytes / bandwidth, and is
    usable latency later; it counts as in flight until then. ``timeout_s`` bounds every gloo wait: a
    neighbour silent for that long is taken as dead (PeerError naming it).
    """

    def __init__(self, world: World, neighbours: Sequence[int], message_nbytes: int, max_in_flight: int = 2,
                 link: LinkModel | None = None, timeout_s: float | None = None,
                 group: object | None = None) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.world = world
        self.neighbours = tuple(neighbours)
        self.message_nbytes = message_nbytes
        self.wire_nbytes = message_nbytes + TRAILER_BYTES
        self.max_in_flight = max_in_flight
        self.link = link if link is not None and link.enabled else None
        self.timeout_s = timeout_s if timeout_s is not None else world.timeout_s
        self._wait_timeout = datetime.timedelta(seconds=max(self.timeout_s, 0.001))
        if group is None:
            group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=max(self.timeout_s, 1.0)))
        self._group = group
        self._lock = threading.Lock()
        self._peers = {j: _Peer(j, self.wire_nbytes, max_in_flight, self._lock) for j in self.neighbours}
        self._error: str | None = None
        self._culprit: int | None = None  # the neighbour the first failure involved
        self._echo: tuple[str, float] | None = None  # see _record_failure
        self._aborted = False
        self._finishing = False
        self._newest_version = 0
        self.sent = ByteCounter({j: 0 for j in self.neighbours})
        self.received = ByteCounter({j: 0 for j in self.neighbours})
        self.replaced = 0  # models replaced by a newer one before they were posted, summed over neighbours
        self._threads = []
        for j in self.neighbours:
            for target, kind in ((self._receive_loop, "recv"), (self._send_loop, "send")):
                thread = threading.Thread(target=target, args=(self._peers[j],), daemon=True,
                                          name=f"qtd-async-{kind}-{j}")
                thread.start()
                self._threads.append(thread)

    # ----------------------------------------------------------------- training-loop side (non-blocking)

    def send(self, message: torch.Tensor, version: int, final: bool = False) -> None:
        """Queue ``message`` (the encoded model, any device) for every neighbour and return at once.

        A model still waiting for a free in-flight slot is replaced by this one (counted in
        :attr:`replaced`). ``final`` marks the node's last model (see :meth:`finish`).
        """
        if message.numel() != self.message_nbytes:
            raise ValueError(f"message has {message.numel()} bytes, the channel carries {self.message_nbytes}")
        produced_at = time.time()
        with self._lock:
            self._raise_if_failed()
            if self._finishing:
                raise RuntimeError("this channel has finished: no model can be sent after finish()")
            self._finishing = final
            self._newest_version = max(self._newest_version, version)
            for peer in self._peers.values():
                if peer.pending is not None:
                    buffer = peer.pending.buffer
                    self.replaced += 1
                else:
                    buffer = peer.send_free.pop()
                buffer[: self.message_nbytes].copy_(message)
                peer.pending = _Pending(buffer, version, produced_at, final)
                peer.send_cond.notify()

    def finish(self, message: torch.Tensor, version: int) -> None:
        """Send this node's final model, flagged FINAL; nothing can be sent afterwards. Receiving goes on
        (and :meth:`poll` keeps working) until every neighbour has sent its own final model."""
        self.send(message, version, final=True)

    def poll(self) -> list[Arrival]:
        """The newest usable model of each neighbour that sent one since the last poll (older usable ones
        are dropped, counted in ``Arrival.skipped``). Never waits for a neighbour."""
        now = time.time()
        arrivals = []
        with self._lock:
            self._raise_if_failed()
            for peer in self._peers.values():
                if peer.handed_out is not None:
                    peer.recv_free.append(peer.handed_out)
                    peer.handed_out = None
                newest = self._take_usable(peer, now)
                if newest is None:
                    continue
                peer.handed_out = newest.buffer
                skipped, peer.skipped = peer.skipped, 0
                arrivals.append(Arrival(peer=peer.rank, message=newest.buffer[: self.message_nbytes],
                                        version=newest.version, newest_known=peer.newest_known,
                                        produced_at=newest.produced_at, available_at=newest.available_at,
                                        final=bool(newest.flags & FLAG_FINAL), skipped=skipped))
                peer.recv_cond.notify()
        return arrivals

    def peers_finished(self) -> list[int]:
        """Neighbours whose final model has arrived."""
        with self._lock:
            return [j for j, peer in self._peers.items() if peer.got_final]

    def in_flight(self) -> dict[int, int]:
        """Messages posted to each neighbour and not yet delivered (for tests and monitoring)."""
        with self._lock:
            return {j: len(peer.posted) for j, peer in self._peers.items()}

    def close(self, timeout_s: float | None = None) -> None:
        """Wait (at most ``timeout_s``, default the channel's timeout) until every final model was sent and
        every neighbour's final model received, then join the threads. Call :meth:`finish` first.

        Raises PeerError naming the neighbours that did not finish in time. Without a prior finish
        (an error path), the threads are abandoned: they are daemons blocked in gloo, and the process
        is about to exit.
        """
        if not self._finishing:
            self.abort()
            return
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.timeout_s)
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        with self._lock:
            self._raise_if_failed()
            late = sorted({peer.rank for peer in self._peers.values() if not (peer.send_done and peer.recv_done)})
        if late:
            self.abort()
            raise PeerError(f"node {self.world.rank} finished, but node(s) {late} did not complete the final "
                            f"exchange within {timeout_s if timeout_s is not None else self.timeout_s:g} s", late[0])

    def abort(self) -> None:
        """Stop the threads' Python-side loops; threads blocked in gloo stay blocked (daemons)."""
        with self._lock:
            self._aborted = True
            for peer in self._peers.values():
                peer.send_cond.notify_all()
                peer.recv_cond.notify_all()

    # ----------------------------------------------------------------- helpers (lock held)

    def _raise_if_failed(self) -> None:
        if self._error is None and self._echo is not None and time.monotonic() - self._echo[1] > _ECHO_GRACE_S:
            self._error = self._echo[0]
        if self._error is not None:
            raise PeerError(self._error, self._culprit)

    def _fail(self, peer: _Peer, verb: str, exc: BaseException) -> None:
        with self._lock:
            self._record_failure(peer, verb, exc)

    def _record_failure(self, peer: _Peer, verb: str, exc: BaseException) -> None:
        """Remember the first failure (lock held); the training loop raises it as a PeerError.

        A gloo wait that times out closes every pair of the context, so the other threads' waits fail
        with "Application timeout caused pair closure" at about the same time: that echo names the wrong
        peer, and is reported only if the timed-out wait's own error does not follow within a moment.
        """
        text = _short(exc)
        if "pair closure" in text.lower():
            if self._echo is None:
                self._echo = (f"asynchronous exchange on node {self.world.rank}: a wait timed out "
                              f"(comm.timeout_s={self.timeout_s:g} s) and closed every connection", time.monotonic())
            return
        if "timed out" in text.lower():
            why = (f"nothing from node {peer.rank} within comm.timeout_s={self.timeout_s:g} s; that peer stalled "
                   "or died (raise comm.timeout_s if it is only slow)")
        else:
            why = (f"cannot {verb} node {peer.rank} ({text}); node {peer.rank} probably crashed or was killed, "
                   "check its log")
        if self._error is None:
            self._error = f"asynchronous exchange on node {self.world.rank}: {why}"
            self._culprit = peer.rank
        for other in self._peers.values():
            other.send_cond.notify_all()
            other.recv_cond.notify_all()

    def _take_usable(self, peer: _Peer, now: float) -> _Held | None:
        """Remove every usable held message of ``peer``; recycle all but the newest, which is returned.
        Messages on one link arrive in order and become usable in order, so usable ones are a prefix."""
        newest = None
        while peer.inbox and peer.inbox[0].available_at <= now:
            held = peer.inbox.popleft()
            if newest is not None:
                peer.recv_free.append(newest.buffer)
                peer.skipped += 1
            newest = held
        return newest

    def _drop_superseded(self, peer: _Peer, now: float) -> None:
        """Keep only the newest usable held message (what the next poll would return anyway)."""
        newest = self._take_usable(peer, now)
        if newest is not None:
            peer.inbox.appendleft(newest)

    # ----------------------------------------------------------------- threads

    def _receive_loop(self, peer: _Peer) -> None:
        """Always one receive from ``peer`` posted, until its final message arrived."""
        while True:
            with self._lock:
                while not peer.recv_free and not self._aborted and self._error is None:
                    # all buffers hold messages: free the superseded ones, or wait until one becomes usable
                    self._drop_superseded(peer, time.time())
                    if peer.recv_free:
                        break
                    soonest = min((h.available_at for h in peer.inbox), default=time.time() + 0.05)
                    peer.recv_cond.wait(max(soonest - time.time(), 0.001))
                if self._aborted or self._error is not None:
                    return
                buffer = peer.recv_free.pop()
            try:
                dist.irecv(buffer, src=peer.rank, group=self._group, tag=_TAG).wait(self._wait_timeout)
            except RuntimeError as exc:
                self._fail(peer, "receive from", exc)
                return
            arrived = time.time()
            version, newest, flags, produced_at, available_at = read_trailer(buffer[self.message_nbytes:])
            with self._lock:
                self.received.add(peer.rank, self.wire_nbytes)
                peer.newest_known = max(peer.newest_known, newest, version)
                peer.inbox.append(_Held(buffer, version, peer.newest_known, flags, produced_at,
                                        max(available_at, arrived) if available_at else arrived))
                if flags & FLAG_FINAL:
                    peer.got_final = True
                    peer.recv_done = True
                    return

    def _send_loop(self, peer: _Peer) -> None:
        """Post the pending model when an in-flight slot is free; reap completed sends; stop after FINAL."""
        while True:
            with self._lock:
                while True:
                    if self._aborted or self._error is not None:
                        return
                    now = time.time()
                    for posted in [p for p in peer.posted if p.done and p.available_at <= now]:
                        peer.posted.remove(posted)
                        peer.send_free.append(posted.buffer)
                    if peer.pending is not None and len(peer.posted) < self.max_in_flight:
                        if not self._post(peer, now):
                            return
                        continue
                    waiting = next((p for p in peer.posted if not p.done), None)
                    if waiting is not None:
                        break  # wait on it outside the lock
                    if peer.sent_final:  # the final message was posted and every send completed
                        peer.send_done = True
                        return
                    soonest = min((p.available_at for p in peer.posted), default=None)
                    peer.send_cond.wait(None if soonest is None else max(soonest - now, 0.0005))
            try:
                waiting.work.wait(self._wait_timeout)
            except RuntimeError as exc:
                self._fail(peer, "send to", exc)
                return
            with self._lock:
                waiting.done = True

    def _post(self, peer: _Peer, now: float) -> bool:
        """Post ``peer.pending`` (lock held). Returns False if posting failed (the error is recorded)."""
        pending = peer.pending
        peer.pending = None
        available_at = 0.0
        if self.link:
            depart = max(now, peer.link_free_at)
            peer.link_free_at = depart + (self.link.delay_s(self.wire_nbytes) - self.link.latency_s)
            available_at = peer.link_free_at + self.link.latency_s
        flags = FLAG_FINAL if pending.final else 0
        trailer = pack_trailer(pending.version, self._newest_version, flags, pending.produced_at, available_at)
        pending.buffer[self.message_nbytes:].copy_(torch.frombuffer(bytearray(trailer), dtype=torch.uint8))
        try:
            work = dist.isend(pending.buffer, dst=peer.rank, group=self._group, tag=_TAG)
        except RuntimeError as exc:
            self._record_failure(peer, "send to", exc)
            return False
        peer.posted.append(_Posted(pending.buffer, work, available_at or now))
        self.sent.add(peer.rank, self.wire_nbytes)
        if pending.final:
            peer.sent_final = True
        return True
