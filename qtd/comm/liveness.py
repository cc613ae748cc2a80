"""Heartbeats in the rendezvous store, so that a failed collective can name the node that died.

A collective (all-reduce, all-gather) that fails because a process was killed reports only a lost
connection. Every node therefore writes its wall-clock time to the store from a background thread;
after a failure, the nodes whose heartbeat stopped first are the ones that died.
"""

from __future__ import annotations

import datetime
import threading
import time

import torch.distributed as dist

PERIOD_S = 0.5
_KEY = "qtd/alive/{}"


class Heartbeat:
    """A daemon thread that stamps ``qtd/alive/<rank>`` every PERIOD_S seconds while the process lives."""

    def __init__(self, rank: int, size: int) -> None:
        self.rank, self.size = rank, size
        self._store = dist.distributed_c10d._get_default_store()
        self._stop = threading.Event()
        self._store.set(_KEY.format(rank), repr(time.time()))
        self._thread = threading.Thread(target=self._run, name="qtd-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(PERIOD_S):
            try:
                self._store.set(_KEY.format(self.rank), repr(time.time()))
            except RuntimeError:  # the store's host is gone; the training loop reports the failure
                return

    def stop(self) -> None:
        self._stop.set()

    def silent_nodes(self, settle_s: float = 3 * PERIOD_S) -> str:
        """After a failure: which nodes stopped beating, oldest silence first, as a phrase for a message.

        Waits ``settle_s`` so that a node killed a moment ago has missed its beats.
        """
        time.sleep(settle_s)
        try:
            self._store.set_timeout(datetime.timedelta(seconds=2))
            now = time.time()
            last = {}
            for rank in range(self.size):
                if rank != self.rank and self._store.check([_KEY.format(rank)]):
                    last[rank] = float(self._store.get(_KEY.format(rank)))
        except (RuntimeError, ValueError):
            return "the rendezvous store is unreachable too, so the node hosting it (node 0 or the launcher) is gone"
        silent = sorted((t, r) for r, t in last.items() if now - t > 2 * PERIOD_S)
        if not silent:
            return ""
        first_t, first = silent[0]
        text = f"node {first} stopped (no heartbeat for {now - first_t:.1f} s)"
        others = [r for _, r in silent[1:]]
        if others:
            text += f", then node{'s' if len(others) > 1 else ''} {', '.join(map(str, others))}"
        return text
