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


def supervise(command: Sequence[str], nodes: int, timeout_s: float, restarts: int = 0, machines: int = 1,
              machine: int = 0, endpoint: str | None = None) -> int:
    """Run ``command`` (``python -m qtd.train ...``) once per node of this machine; 0 when the run finished
    on some node here.

    With ``restarts``, a node that exits early is started again (at most ``restarts`` times in all) and
    joins the running nodes at their next evaluation (:func:`qtd.comm.join_world`); the others never stop.
    On ``machines`` machines (``endpoint`` = machine 0's HOST:PORT), this one runs nodes ``machine * k`` to
    ``machine * k + k - 1`` (k = nodes / machines), and machine 0 hosts the store there, kept up until
    every node has stopped beating.
    """
    from ..comm.membership import host_store, wait_until_quiet

    host, port = endpoint.rpartition(":")[::2] if endpoint else ("127.0.0.1", "0")
    store = host_store(timeout_s, host, int(port)) if machine == 0 else None
    port = str(store.port) if store is not None else port
    per_machine = nodes // machines
    local = range(machine * per_machine, (machine + 1) * per_machine)
    base = {**os.environ, "MASTER_ADDR": host, "MASTER_PORT": port, "WORLD_SIZE": str(nodes),
            "LOCAL_WORLD_SIZE": str(per_machine), "GROUP_RANK": str(machine), "TORCHELASTIC_USE_AGENT_STORE": "True",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    code = _watch(command, base, local, timeout_s, restarts, machines > 1)
    if store is not None and machines > 1:  # the other machines' nodes still need the store
        wait_until_quiet(store, nodes, timeout_s + GRACE_S)
    return code


def _watch(command: Sequence[str], base: dict, local: range, timeout_s: float, restarts: int,
           elsewhere: bool) -> int:
    """Start and watch this machine's nodes (graph nodes ``local``; ``elsewhere``: other machines run more);
    see :func:`supervise`."""
    nodes = len(local)

    def start(index: int, joining: bool = False) -> subprocess.Popen:
        return subprocess.Popen(list(command), env={**base, "RANK": str(local[index]), "LOCAL_RANK": str(index),
                                                    **({JOIN_ENV: "1"} if joining else {})})

    procs = [start(k) for k in range(nodes)]
    restarts_left = restarts
    codes: dict[int, int] = {}
    finished_at: float | None = None
    try:
        while len(codes) < nodes:
            time.sleep(0.1)
            for rank, proc in enumerate(procs):  # rank: this machine's index of the node
                if rank in codes or proc.poll() is None:
                    continue
                codes[rank] = proc.returncode
                if proc.returncode == 0:
                    finished_at = finished_at or time.monotonic()
                elif finished_at is None and len(codes) < nodes:
                    # a restart can fix a lost process (a signal, or dropped: 1), not a clear error (2), and
                    # needs nodes still running to let it in
                    again = restarts_left > 0 and proc.returncode != 2 and (elsewhere or any(
                        other.poll() is None for k, other in enumerate(procs) if k != rank))
                    print(f"qtd: node {local[rank]} {_how(proc.returncode)}; the others go on without it "
                          f"(comm.on_peer_loss=continue)" + ("; starting it again to rejoin them" if again else ""),
                          file=sys.stderr, flush=True)
                    if again:
                        restarts_left -= 1
                        procs[rank] = start(rank, joining=True)
                        del codes[rank]
            if finished_at is not None and time.monotonic() - finished_at > timeout_s + GRACE_S:
                for rank, proc in enumerate(procs):
                    if rank not in codes:
                        print(f"qtd: node {local[rank]} was left out of the run and did not exit; stopping it",
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
    where = " on this machine" if elsewhere else ""
    print(f"qtd: error: every node{where} stopped; node {local[first]} {_how(codes[first])} (its own message is "
          "above)", file=sys.stderr, flush=True)
    return 1
