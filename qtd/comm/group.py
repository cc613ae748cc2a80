"""The process group: backend and device choice, collectives with bounded waits.

This package is the only place in qtd that calls ``torch.distributed``.
"""

from __future__ import annotations

import datetime
import os
import re
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import ConfigError, PeerError
from .liveness import Heartbeat
from .membership import Regroup, admit, forget, join, regroup


@dataclass(frozen=True)
class World:
    """This process's place in the run: its rank (= graph node), the world size, device and backend, and
    the heartbeat that names a dead peer after a failure (None in a world of one, or when not started)."""

    rank: int  # in the current process group
    size: int
    local_rank: int
    device: torch.device
    backend: str
    timeout_s: float
    heartbeat: Heartbeat | None = field(default=None, compare=False, repr=False)
    nodes: tuple[int, ...] = ()  # graph node of each group rank, once an elastic run lost a node (else rank = node)
    epoch: int = 0  # how many times the membership changed
    elastic: bool = False  # comm.on_peer_loss=continue: a lost peer is dropped (qtd.comm.membership)

    @property
    def node(self) -> int:
        """This process's graph node (its rank in the first process group)."""
        return self.nodes[self.rank] if self.nodes else self.rank

    @property
    def members(self) -> tuple[int, ...]:
        """The graph nodes in the current process group, in group-rank order."""
        return self.nodes if self.nodes else tuple(range(self.size))

    def group_rank(self, node: int) -> int:
        """Graph node ``node``'s rank in the current process group."""
        return self.nodes.index(node) if self.nodes else node

    @property
    def polls(self) -> bool:
        """NCCL works are polled (their ``wait`` only orders streams); gloo works block in ``wait(timeout)``."""
        return self.backend == "nccl"


def choose_backend(requested: str) -> tuple[str, torch.device]:
    """nccl and one GPU per local rank when CUDA is available, otherwise gloo on the CPU."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if requested == "nccl" and not cuda:
        raise ConfigError("comm.backend='nccl' needs CUDA GPUs, and none is available: use comm.backend=gloo or auto")
    backend = requested if requested != "auto" else ("nccl" if cuda else "gloo")
    if backend == "nccl":
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return backend, device


def init_world(backend: str = "auto", timeout_s: float = 60.0, elastic: bool = False) -> World:
    """Join the process group that torchrun (or a test harness) described in the environment, or take the
    one this process already started (``torch.distributed.init_process_group``)."""
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ConfigError(
            f"this process was not started by torchrun (missing {', '.join(missing)}): run `qtd launch CONFIG` "
            "or `torchrun --nproc_per_node N -m qtd.train --config CONFIG`")
    if backend == "auto" and dist.is_initialized():  # a group the caller started itself: take it as it is
        backend = str(dist.get_backend())
    backend, device = choose_backend(backend)
    if device.type == "cpu":
        torch.set_num_threads(1)  # one core per node: n processes share the machine
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=max(timeout_s, 1.0)))
        except (RuntimeError, ValueError) as exc:  # DistError and friends: a peer left or never came
            raise PeerError(f"joining the process group ({backend}) failed: {_short(exc)}; another node "
                            "probably stopped first (see its message) or could not be reached") from None
    heartbeat = Heartbeat(dist.get_rank(), dist.get_world_size()) if dist.get_world_size() > 1 else None
    return World(rank=dist.get_rank(), size=dist.get_world_size(),
                 local_rank=int(os.environ.get("LOCAL_RANK", "0")), device=device, backend=backend,
                 timeout_s=timeout_s, heartbeat=heartbeat, elastic=elastic)


def regroup_world(world: World, iteration: int, error: PeerError) -> tuple[World, Regroup]:
    """Elastic runs, after ``error`` at ``iteration``: the survivors' new world (:mod:`.membership`)."""
    if world.heartbeat is None:
        raise error
    forget(error)
    change = regroup(world.heartbeat.store, world.backend, world.epoch, world.members, world.node, iteration,
                     error.stalled, world.heartbeat, world.timeout_s)
    world.heartbeat.members = change.members
    return _world_of(world, change), change


def join_world(backend: str, timeout_s: float) -> tuple[World, Regroup]:
    """An elastic run's node started after the others (qtd launch --max-restarts restarts a lost one): reach
    the launcher's store, ask to join, and wait until the members let it in at an evaluation."""
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=datetime.timedelta(seconds=max(timeout_s, 1.0)))
    backend, device = choose_backend(backend)
    if device.type == "cpu":
        torch.set_num_threads(1)
    node, nodes = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    heartbeat = Heartbeat(node, nodes, store)
    change = join(store, backend, node, timeout_s)
    heartbeat.members = change.members
    world = World(rank=change.members.index(node), size=len(change.members),
                  local_rank=int(os.environ.get("LOCAL_RANK", "0")), device=device, backend=backend,
                  timeout_s=timeout_s, heartbeat=heartbeat, nodes=change.members, epoch=change.epoch, elastic=True)
    return world, change


def admit_world(world: World, joiners: tuple[int, ...], iteration: int, time_s: float,
                history: list) -> tuple[World, Regroup]:
    """Collective among an elastic run's members: let ``joiners`` in after this evaluation (:mod:`.membership`)."""
    change = admit(world.heartbeat.store, world.backend, world.epoch, world.members, world.rank, joiners, iteration,
                   time_s, history, world.timeout_s)
    world.heartbeat.members = change.members
    return _world_of(world, change), change


def _world_of(world: World, change: Regroup) -> World:
    return World(rank=change.members.index(world.node), size=len(change.members), local_rank=world.local_rank,
                 device=world.device, backend=world.backend, timeout_s=world.timeout_s, heartbeat=world.heartbeat,
                 nodes=change.members, epoch=change.epoch, elastic=True)


def record_blame(world: World, error: PeerError) -> None:
    """Before this node leaves after ``error``: let the others (and the launcher) know whom it blames."""
    if world.heartbeat is not None:
        world.heartbeat.record_blame(error.culprit)
def group_started() -> bool:
    """Whether this process has joined a process group already (its own ``init_process_group`` or qtd's)."""
    return dist.is_initialized()


def close_world(world: World | None) -> None:
    """Stop the world's heartbeat and leave the process group (``destroy_process_group``)."""
    if world is not None and world.heartbeat is not None:
        world.heartbeat.stop()
    if dist.is_initialized():
        dist.destroy_process_group()


def _name(peer: int | None) -> str:
    return "a peer" if peer is None else f"node {peer}"


def _culprit(world: World, peer: int | None) -> tuple[int | None, str]:
    """Whom the heartbeats blame; an elastic run regroups at once instead (the survivors' agreement finds
    who is gone), so it does not wait for them to settle."""
    if world.heartbeat is None or world.elastic:
        return peer, ""
    return world.heartbeat.culprit(peer)


def peer_failure(world: World, what: str, peer: int | None, exc: BaseException) -> PeerError:
    """The error for a peer whose connection broke, naming the node that caused it where the heartbeats and
    blame records tell (a neighbour that left because of another node points to that one)."""
    culprit, how = _culprit(world, peer)
    if how:
        return PeerError(f"{what}: {how}; check that node's log ({_short(exc)})", culprit)
    return PeerError(f"{what}: {_name(peer)} failed ({_short(exc)}); it probably crashed or was killed, check its "
                     "log", culprit)


def stall_error(world: World, what: str, peer: int | None) -> PeerError:
    """Nothing from ``peer`` within the timeout: it stalled, or it waits itself on a node that did."""
    culprit, how = _culprit(world, peer)
    cause = f"; {how}" if how and (culprit != peer or "unreachable" in how) else ""
    stalled = _name(culprit)
    return PeerError(f"{what}: nothing from {_name(peer)} within comm.timeout_s={world.timeout_s:g} s{cause}; "
                     f"{stalled} stalled or died (raise comm.timeout_s if it is only slow)", culprit, stalled=True)


def wait_works(works: Sequence[tuple[object, int | None]], world: World, what: str) -> None:
    """Wait for every (work, peer rank or None) pair, at most ``world.timeout_s`` seconds in all.

    A stalled peer ends in a PeerError that names it (or the node it waits on in turn), not a hang; a peer
    that died surfaces as the backend's error, also turned into a PeerError naming the cause. Gloo's
    point-to-point works only complete inside ``wait``, so they are waited on one by one with the remaining
    time, and the one that times out names its peer; CUDA (NCCL) works are polled, since their ``wait``
    only orders streams and does not block the host.
    """
    deadline = time.monotonic() + world.timeout_s
    pending = list(works)
    pause = 2e-5
    while pending:
        still = []
        for work, peer in pending:
            remaining = deadline - time.monotonic()
            try:
                if world.polls:
                    if not work.is_completed():
                        still.append((work, peer))
                        continue
                    work.wait()
                else:
                    work.wait(timeout=datetime.timedelta(seconds=max(remaining, 0.001)))
            except RuntimeError as exc:
                if "timed out" in str(exc).lower():
                    raise stall_error(world, what, peer) from None
                raise peer_failure(world, what, peer, exc) from None
        pending = still
        if not pending:
            return
        if time.monotonic() > deadline:
            raise stall_error(world, what, pending[0][1])
        time.sleep(pause)
        pause = min(pause * 2, 2e-3)


def _short(exc: BaseException) -> str:
    """The backend's error without its source path and boilerplate advice."""
    lines = str(exc).strip().splitlines()
    text = re.sub(r"\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", lines[-1]) if lines else type(exc).__name__
    return text.split(". This is typically")[0][:300]


def all_reduce_sum(tensor: torch.Tensor, world: World, what: str = "all-reduce") -> torch.Tensor:
    """Collective: every rank calls it. Sums ``tensor`` in place across ranks, bounded by the timeout."""
    if world.size == 1:
        return tensor
    try:
        work = dist.all_reduce(tensor, op=dist.ReduceOp.SUM, async_op=True)
    except RuntimeError as exc:
        raise peer_failure(world, what, None, exc) from None
    wait_works([(work, None)], world, what)
    return tensor


def all_gather_bytes(message: Tensor, world: World, what: str = "all-gather",
                     out: Tensor | None = None) -> Tensor:
    """Collective: every rank contributes one uint8 message of the same length; returns a
    (world.size, nbytes) uint8 tensor whose row j is rank j's message (into ``out`` when given).

    Ring all-gather moves (world.size - 1) messages through every rank (see ``ring_allgather_bytes``).
    A rank whose message has another length makes the backend fail on every rank: the sizes must be
    agreed beforehand (they follow from the config).
    """
    if message.dtype != torch.uint8 or message.dim() != 1:
        raise ValueError(f"all_gather_bytes sends 1-D uint8 messages, got {message.dtype} of shape "
                         f"{tuple(message.shape)}")
    nbytes = message.numel()
    if out is None:
        out = torch.empty(world.size, nbytes, dtype=torch.uint8, device=message.device)
    elif out.shape != (world.size, nbytes) or out.dtype != torch.uint8 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous ({world.size}, {nbytes}) uint8 tensor, "
                         f"got {out.dtype} of shape {tuple(out.shape)}")
    if world.size == 1:
        out[0].copy_(message)
        return out
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    try:
        work = gather(out.view(-1), message, async_op=True)
    except RuntimeError as exc:
        raise peer_failure(world, what, None, exc) from None
    wait_works([(work, None)], world, what)
    return out


def broadcast(tensor: torch.Tensor, world: World, src: int = 0, what: str = "broadcast") -> torch.Tensor:
    """Collective: rank ``src``'s tensor is copied into every rank's ``tensor``."""
    if world.size == 1:
        return tensor
    try:
        work = dist.broadcast(tensor, src=src, async_op=True)
    except RuntimeError as exc:
        raise peer_failure(world, what, None, exc) from None
    wait_works([(work, src)], world, what)
    return tensor


def barrier(world: World, what: str = "barrier") -> None:
    """Collective: returns when every rank has called it (a tiny all-reduce, so it is bounded too)."""
    all_reduce_sum(torch.zeros(1, device=world.device), world, what)
