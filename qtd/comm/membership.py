"""Who is in the run (``comm.on_peer_loss: continue``): after a lost node, the survivors agree on the new
membership through the rendezvous store and go on in a fresh process group.

The store must outlive every node, so elastic runs are started by qtd's own supervisor
(:mod:`qtd.engine.supervise`), which hosts it. A node whose exchange or collective fails (a dead peer closes
its connections at once; a stalled one is given up on after ``comm.timeout_s``) leaves its process group;
leaving closes its connections, so every other node's next wait fails at once too, and every survivor
ends up here. Each writes the iteration it stands at under epoch e + 1 and waits until every member of
epoch e has arrived or fallen silent (its heartbeat stopped). The first to see that proposes the
membership in one compare-and-set; every node reads the same decision: the members, the iteration all
go on from (the furthest any member reached, so no update is undone), and the lost nodes with their
cause. The members then form epoch e + 1's process group over a store prefix of their own. A node the
others gave up on (it came back after they decided) learns it is out and leaves with one clear message.
"""

from __future__ import annotations

import datetime
import gc
import json
import time
from dataclasses import dataclass

import torch.distributed as dist

from ..errors import PeerError
from .liveness import PERIOD_S

POLL_S = 0.05
SILENT_S = 3 * PERIOD_S  # a member whose heartbeat is this old has stopped or died
_AT = "qtd/epoch/{}/at/{}"
_DECIDED = "qtd/epoch/{}/members"
_EPOCH = "qtd/epoch/now"  # the newest epoch whose group formed
_JOIN = "qtd/join/{}"  # a node asks to (re)join
_JOINS = "qtd/join/count"
JOIN_WAIT_S = 900.0  # how long a joining node waits to be let in (the members look at every evaluation)


@dataclass(frozen=True)
class Regroup:
    """What the survivors agreed on when they formed epoch ``epoch``."""

    epoch: int
    members: tuple[int, ...]  # in group-rank order: joined nodes come after the others
    lost: tuple[int, ...]
    iteration: int  # every member goes on from this iteration
    cause: str  # "died" (its connections closed), "stalled" (silent for comm.timeout_s) or "joined"
    seconds: float  # from this node's failure (or the evaluation that let nodes in) to the new group
    joined: tuple[int, ...] = ()
    time_s: float = 0.0  # joins: the members' mean training time, where the joining nodes' clocks start
    history: tuple = ()  # joins: the changes before this one, for the joining nodes' record

    def record(self) -> dict:
        return {"epoch": self.epoch, "iteration": self.iteration, "lost": list(self.lost),
                "joined": list(self.joined), "cause": self.cause, "members": sorted(self.members),
                "seconds": round(self.seconds, 3)}


def host_store(timeout_s: float, host: str = "127.0.0.1", port: int = 0):
    """The rendezvous store of an elastic run, hosted by the launcher's own process (port 0: a free one, read
    back at ``.port``), so that it outlives every node."""
    return dist.TCPStore(host, port, None, True, datetime.timedelta(seconds=max(timeout_s, 30.0)),
                         wait_for_workers=False)


def wait_until_quiet(store, nodes: int, bound_s: float) -> None:
    """The store's host, before it leaves: wait (at most ``bound_s``) until no node beats any more, so nodes
    on other machines finish with the store still up."""
    from .liveness import _ALIVE

    give_up = time.monotonic() + bound_s
    while time.monotonic() < give_up:
        now = time.time()
        beating = [k for k in range(nodes) if store.check([_ALIVE.format(k)])
                   and now - float(store.get(_ALIVE.format(k))) < SILENT_S]
        if not beating:
            return
        time.sleep(0.2)


def _get(store, key: str) -> str | None:
    return store.get(key).decode() if store.check([key]) else None


def agree(store, epoch: int, members: tuple[int, ...], node: int, iteration: int, stalled: bool,
          heartbeat, wait_s: float) -> tuple[tuple[int, ...], tuple[int, ...], int, str]:
    """The membership of epoch ``epoch + 1`` (members, lost, iteration, cause), the same on every node.

    ``members`` are epoch ``epoch``'s; ``iteration`` is where this node stands; ``stalled``: its failure was a
    timeout. Waits at most ``wait_s`` for members that still beat but have not arrived (they wait out their
    own timeout), then decides without them.
    """
    nxt = epoch + 1
    store.set(_AT.format(nxt, node), json.dumps({"iteration": iteration, "stalled": stalled}))
    give_up = time.monotonic() + wait_s
    while True:
        decided = _get(store, _DECIDED.format(nxt))
        if decided is None:
            arrived = {m: json.loads(v) for m in members if (v := _get(store, _AT.format(nxt, m))) is not None}
            silent = set(heartbeat.silent(members, SILENT_S)) - set(arrived)
            if len(arrived) + len(silent) == len(members) or time.monotonic() > give_up:
                kept = [m for m in members if m in arrived]  # the group's order: the lowest-ranked keeps the run files
                proposal = json.dumps({"members": kept, "lost": sorted(set(members) - set(kept)),
                                       "iteration": max(a["iteration"] for a in arrived.values()),
                                       "cause": "stalled" if any(a["stalled"] for a in arrived.values()) else "died"})
                decided = store.compare_set(_DECIDED.format(nxt), "", proposal).decode()
        if decided is not None:
            value = json.loads(decided)
            return tuple(value["members"]), tuple(value["lost"]), int(value["iteration"]), value["cause"]
        time.sleep(POLL_S)


def forget(error: BaseException) -> None:
    """Drop what ``error`` keeps alive: its traceback holds the failed exchange's works, and they hold the
    process group's connections open, so :func:`leave_group` would not close them."""
    while error is not None:
        linked = error.__context__ or error.__cause__
        error.__traceback__ = error.__context__ = error.__cause__ = None
        error = linked


def leave_group() -> None:
    """Leave the current process group: its connections close (once nothing holds one of its works), so
    the other nodes' waits on this one fail at once."""
    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()


def join_group(store, backend: str, epoch: int, rank: int, size: int, timeout_s: float) -> None:
    """Form epoch ``epoch``'s process group (the default group) over its own store prefix."""
    dist.init_process_group(backend, store=dist.PrefixStore(f"qtd/epoch/{epoch}/group", store), rank=rank,
                            world_size=size, timeout=datetime.timedelta(seconds=max(timeout_s, 1.0)))


def regroup(store, backend: str, epoch: int, members: tuple[int, ...], node: int, iteration: int,
            stalled: bool, heartbeat, timeout_s: float) -> Regroup:
    """After a failure in epoch ``epoch``: leave its group, agree on the next membership, join its group
    (again, one epoch on, if a member is lost while the group forms).

    PeerError when this node is no longer a member: the others went on without it.
    """
    started, lost_all = time.monotonic(), ()
    while True:
        leave_group()
        new_members, lost, agreed, cause = agree(store, epoch, members, node, iteration, stalled, heartbeat,
                                                 timeout_s + 2 * SILENT_S)
        lost_all += lost
        if node not in new_members:
            raise PeerError(f"the other nodes went on without this one from iteration {agreed} (it was silent "
                            f"past comm.timeout_s={timeout_s:g} s when they agreed on who is left)", node)
        epoch, members, iteration = epoch + 1, new_members, agreed
        try:
            join_group(store, backend, epoch, new_members.index(node), len(new_members), timeout_s)
        except (RuntimeError, ValueError):  # a member was lost meanwhile: agree once more
            stalled = True
            continue
        store.set(_EPOCH, str(epoch))
        return Regroup(epoch, members, tuple(sorted(lost_all)), agreed, cause, time.monotonic() - started)


def ask_to_join(store, node: int) -> None:
    """A node started after the others (or restarted after it was lost) asks to be let in."""
    store.set(_JOIN.format(node), "1")
    store.add(_JOINS, 1)


class JoinRequests:
    """What the members read at every evaluation: which nodes asked to join (one store read while none did)."""

    def __init__(self, store, nodes: int) -> None:
        self.store, self.nodes, self._count = store, nodes, 0

    def mask(self, members: tuple[int, ...]) -> int:
        """The nodes outside ``members`` that asked to join, as a bit mask (gathered with the evaluation)."""
        count = int(self.store.add(_JOINS, 0))
        if count == self._count:
            return 0
        asking = [k for k in range(self.nodes) if k not in members and self.store.check([_JOIN.format(k)])]
        if not asking:
            self._count = count
        return sum(1 << k for k in asking)


def admit(store, backend: str, epoch: int, members: tuple[int, ...], rank: int, joiners: tuple[int, ...],
          iteration: int, time_s: float, history: list, timeout_s: float) -> Regroup:
    """Collective among the members, right after an evaluation that saw ``joiners`` ask: the lowest-ranked
    member writes the decision (the members, then the joiners; the iteration; its training time), every
    member leaves the group, and all, joiners included, form epoch ``epoch + 1``'s."""
    started, nxt = time.monotonic(), epoch + 1
    new_members = tuple(members) + tuple(j for j in joiners if j not in members)
    if rank == 0:
        for j in joiners:
            store.delete_key(_JOIN.format(j))
        store.set(_DECIDED.format(nxt), json.dumps({"members": list(new_members), "lost": [], "joined": list(joiners),
                                                    "iteration": iteration, "cause": "joined", "time_s": time_s,
                                                    "history": history}))
    store.get(_DECIDED.format(nxt))  # every member waits for the decision (bounded by the store's timeout)
    leave_group()
    join_group(store, backend, nxt, new_members.index(members[rank]), len(new_members), timeout_s)
    store.set(_EPOCH, str(nxt))
    return Regroup(nxt, new_members, (), iteration, "joined", time.monotonic() - started, tuple(joiners), time_s)


def join(store, backend: str, node: int, timeout_s: float) -> Regroup:
    """A joining node: ask, then wait (at most JOIN_WAIT_S) for a decision that lets it in, and join its group."""
    started = time.monotonic()
    epoch = int(store.get(_EPOCH).decode()) if store.check([_EPOCH]) else 0  # before asking: no decision is missed
    ask_to_join(store, node)
    while time.monotonic() - started < JOIN_WAIT_S:
        decided = _get(store, _DECIDED.format(epoch + 1))
        if decided is None:
            time.sleep(POLL_S)
            continue
        value = json.loads(decided)
        members = tuple(value["members"])
        if node not in members or value.get("cause") != "joined":  # a loss came first: wait for the next epoch
            epoch += 1
            continue
        try:
            join_group(store, backend, epoch + 1, members.index(node), len(members), timeout_s)
        except (RuntimeError, ValueError):
            raise PeerError(f"joining the running nodes at iteration {value['iteration']} failed: a member was lost "
                            "as the group formed; start this node again") from None
        return Regroup(epoch + 1, members, (), int(value["iteration"]), "joined", time.monotonic() - started,
                       tuple(value["joined"]), float(value["time_s"]), tuple(value.get("history", ())))
    raise PeerError(f"the running nodes did not let this node in within {JOIN_WAIT_S:g} s (they look at every "
                    "evaluation): the run may have ended, or it does not run with comm.on_peer_loss=continue")
