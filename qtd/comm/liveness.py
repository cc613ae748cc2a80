"""Who caused a failure: heartbeats and blame records in the rendezvous store.

A collective that fails because a process was killed reports only a lost connection, and a node that
waits on a neighbour which is itself stuck behind a stalled node would blame the neighbour. So every node
stamps its wall-clock time into the store from a background thread (a SIGSTOP-ed or killed process stops
stamping), and a node that gives up writes whom it blames before it leaves. :meth:`Heartbeat.culprit`
then follows the chain: a silent node that recorded no blame stopped or died on its own and is the
cause; a node that left because of another points to that one. Every node, and the launcher, thus
names the same node.

A SIGSTOP-ed node 0 still holds the store's socket open, and the store then answers nothing: a read
would wait forever whatever the store's timeout says. So every read or write on the failure path runs
in a helper thread that is given up on after a bounded wait (:func:`_bounded`), and an unanswered store
counts as unreachable.
"""

from __future__ import annotations

import datetime
import os
import threading
import time

import torch.distributed as dist

PERIOD_S = 0.5
STORE_WAIT_S = 3.0  # how long a failing node waits for the store to answer before it calls it unreachable
_ALIVE = "qtd/alive/{}"
_BLAME = "qtd/blame/{}"


def _bounded(call, seconds: float = STORE_WAIT_S):
    """``call()``'s result, or None when it raised RuntimeError/ValueError or did not return in ``seconds``
    (it is then left running in a daemon thread: the process is about to leave)."""
    answer: list = []

    def run() -> None:
        try:
            answer.append(call())
        except (RuntimeError, ValueError):
            pass

    thread = threading.Thread(target=run, name="qtd-store-read", daemon=True)
    thread.start()
    thread.join(seconds)
    return answer[0] if answer else None


def _node_zero_hosts_the_store() -> bool:
    """Whether the workers' store lives in node 0's process: it does when torchrun is told not to share its
    rendezvous store (qtd's launchers all do) or when no torchrun agent started this process."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":  # the launcher hosts it (qtd's supervisor)
        return False
    return os.environ.get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE") == "1" or "TORCHELASTIC_RUN_ID" not in os.environ


class Heartbeat:
    """A daemon thread that stamps ``qtd/alive/<rank>`` every PERIOD_S seconds while the process lives."""

    def __init__(self, rank: int, size: int, store=None) -> None:
        self.rank, self.size = rank, size
        self.members: tuple[int, ...] = tuple(range(size))  # the nodes in the run (elastic runs change it)
        if store is None:  # the first group's store without torch's prefixes: a node that joins later reaches it too
            store = dist.distributed_c10d._get_default_store()
            store = getattr(store, "_underlying_non_prefix_store", store)
        self._store = store
        self._stop = threading.Event()
        self._store.set(_ALIVE.format(rank), repr(time.time()))
        self._thread = threading.Thread(target=self._run, name="qtd-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(PERIOD_S):
            try:
                self._store.set(_ALIVE.format(self.rank), repr(time.time()))
            except RuntimeError:  # the store's host is gone; the training loop reports the failure
                return

    def stop(self) -> None:
        self._stop.set()

    @property
    def store(self):
        """The store the heartbeats go to: the first process group's, which outlives later groups."""
        return self._store

    def silent(self, nodes, seconds: float) -> list[int]:
        """The nodes among ``nodes`` with no heartbeat for ``seconds`` (or none at all)."""
        now, quiet = time.time(), []
        for node in nodes:
            if node == self.rank:
                continue
            key = _ALIVE.format(node)
            if not self._store.check([key]) or now - float(self._store.get(key)) > seconds:
                quiet.append(node)
        return quiet

    def record_blame(self, culprit: int | None) -> None:
        """Before this node leaves after a failure: whom it blames (-1: it could not tell)."""
        _bounded(lambda: self._store.set(_BLAME.format(self.rank), str(-1 if culprit is None else culprit)) or True)

    def _read(self) -> tuple[dict[int, float], dict[int, int]] | None:
        """(last heartbeat per node, recorded blame per node), or None when the store is unreachable or does
        not answer (its host is stopped)."""
        def read() -> tuple[dict[int, float], dict[int, int]]:
            self._store.set_timeout(datetime.timedelta(seconds=2))
            beats, blames = {}, {}
            for rank in self.members:
                if rank == self.rank:
                    continue
                if self._store.check([_ALIVE.format(rank)]):
                    beats[rank] = float(self._store.get(_ALIVE.format(rank)))
                if self._store.check([_BLAME.format(rank)]):
                    blames[rank] = int(self._store.get(_BLAME.format(rank)))
            return beats, blames

        return _bounded(read)

    def culprit(self, suspect: int | None, settle_s: float = 3 * PERIOD_S) -> tuple[int | None, str]:
        """After a failure: the node that caused it, and a phrase saying how it is known.

        Waits ``settle_s`` so that a node killed a moment ago has missed its beats. ``suspect`` is the
        peer this node was waiting for, if any.
        """
        time.sleep(settle_s)
        seen = self._read()
        if seen is None:
            if _node_zero_hosts_the_store():
                return 0, "the rendezvous store, which node 0 hosts, is unreachable or does not answer: node 0 stopped or is gone"
            return (suspect if suspect is not None else 0), (
                "the rendezvous store is unreachable too, so the launcher hosting it is gone")
        beats, blames = seen
        now = time.time()
        silent = sorted((t, r) for r, t in beats.items() if now - t > 2 * PERIOD_S and r not in blames)
        if silent:  # stopped or died without saying why: the cause
            stopped_t, node = silent[0]
            return node, f"node {node} stopped (no heartbeat for {now - stopped_t:.1f} s)"
        node, chain = suspect, []
        while node is not None and node in blames and blames[node] >= 0 and node not in chain:
            chain.append(node)
            node = blames[node]
        if chain and node is not None and node != self.rank:
            via = ", ".join(f"node {r}" for r in chain)
            return node, f"node {node} failed first ({via} left because of it)"
        return suspect, ""
