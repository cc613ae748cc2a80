"""The launcher of elastic runs (``comm.on_peer_loss: continue``): one process per graph node, and the
rendezvous store in the launcher itself, so that it outlives every node.

torchrun cannot run them: its agent stops every worker as soon as one exits, and without it the store
lives in node 0's process. :func:`supervise` starts the nodes as torchrun would (the same environment
variables; ``TORCHELASTIC_USE_AGENT_STORE`` makes every node a client of the launcher's store), reports a
node that exits early and lets the others go on (they regroup: :mod:`qtd.comm.membership`). Once a node
finished the run, a node still running after the others' grace time (one the survivors dropped, e.g. a
stopped process) is killed, so the launcher always returns.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Sequence

GRACE_S = 10.0  # beyond comm.timeout_s: how long the last nodes may take to finish after the first one did
JOIN_ENV = "QTD_JOIN"  # set on a node restarted into the running nodes: it joins them (qtd.comm.join_world)


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def supervise(command: Sequence[str], nodes: int, timeout_s: float, restarts: int = 0) -> int:
    """Run ``command`` (``python -m qtd.train ...``) once per node; 0 when the run finished on some node.

    With ``restarts``, a node that exits early is started again (at most ``restarts`` times in all) and
    joins the running nodes at their next evaluation (:func:`qtd.comm.join_world`); the others never stop.
    """
    from ..comm.membership import host_store

    store = host_store(timeout_s)
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port), "WORLD_SIZE": str(nodes),
            "LOCAL_WORLD_SIZE": str(nodes), "GROUP_RANK": "0", "TORCHELASTIC_USE_AGENT_STORE": "True",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    def start(rank: int, joining: bool = False) -> subprocess.Popen:
        return subprocess.Popen(list(command), env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank),
                                                    **({JOIN_ENV: "1"} if joining else {})})

    procs = [start(r) for r in range(nodes)]
    restarts_left = restarts
    codes: dict[int, int] = {}
    finished_at: float | None = None
    try:
        while len(codes) < nodes:
            time.sleep(0.1)
            for rank, proc in enumerate(procs):
                if rank in codes or proc.poll() is None:
                    continue
                codes[rank] = proc.returncode
                if proc.returncode == 0:
                    finished_at = finished_at or time.monotonic()
                elif finished_at is None and len(codes) < nodes:
                    # a restart can fix a lost process (a signal, or dropped: 1), not a clear error (2), and
                    # needs nodes still running to let it in
                    again = restarts_left > 0 and proc.returncode != 2 and any(
                        other.poll() is None for k, other in enumerate(procs) if k != rank)
                    print(f"qtd: node {rank} {_how(proc.returncode)}; the others go on without it "
                          f"(comm.on_peer_loss=continue)" + ("; starting it again to rejoin them" if again else ""),
                          file=sys.stderr, flush=True)
                    if again:
                        restarts_left -= 1
                        procs[rank] = start(rank, joining=True)
                        del codes[rank]
            if finished_at is not None and time.monotonic() - finished_at > timeout_s + GRACE_S:
                for rank, proc in enumerate(procs):
                    if rank not in codes:
                        print(f"qtd: node {rank} was left out of the run and did not exit; stopping it",
                              file=sys.stderr, flush=True)
                        proc.kill()
                        codes[rank] = proc.wait()
    except KeyboardInterrupt:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            proc.wait()
        return 130
    if any(code == 0 for code in codes.values()):
        return 0
    first = min(codes, key=lambda r: (codes[r] == 0, r))
    print(f"qtd: error: every node stopped; node {first} {_how(codes[first])} (its own message is above)",
          file=sys.stderr, flush=True)
    return 1
