"""Functions run inside the gloo processes that tests/test_async.py starts (one per rank)."""

from __future__ import annotations

import os
import time

import torch


def channel_worker(rank: int, world_size: int, args: dict, out_path: str) -> None:
    """Send versions 1..V of a tiny model to both ring neighbours at this rank's own pace, polling between
    sends; rank ``stall`` stops calling the channel for ``stall_s`` midway. Then finish, drain, close.
    Records every call's duration, every arrival and the in-flight counts."""
    from qtd.comm import AsyncNeighbourChannel, LinkModel, close_world, init_world

    world = init_world("gloo", timeout_s=30)
    neighbours = sorted({(rank - 1) % world_size, (rank + 1) % world_size})
    nbytes = args["nbytes"]
    link = LinkModel(latency_s=args["latency_s"], bandwidth_Bps=args["bandwidth_Bps"])
    channel = AsyncNeighbourChannel(world, neighbours, nbytes, max_in_flight=args["max_in_flight"], link=link)
    pace_s = args["pace_s"][rank]
    versions = args["versions"]
    calls, arrivals, in_flight = [], [], []

    def poll() -> None:
        t0 = time.monotonic()
        got = channel.poll()
        now = time.time()
        calls.append(time.monotonic() - t0)
        for a in got:
            assert int(a.message[0]) == a.version % 256 and int(a.message[-1]) == a.peer
            arrivals.append((a.peer, a.version, a.final, a.produced_at, a.available_at, now, a.newest_known))

    message = torch.zeros(nbytes, dtype=torch.uint8)
    for version in range(1, versions + 1):
        if rank == args["stall"] and version == versions // 2:
            time.sleep(args["stall_s"])
        time.sleep(pace_s)
        message[0], message[-1] = version % 256, rank
        t0 = time.monotonic()
        if version == versions:
            channel.finish(message, version)
        else:
            channel.send(message, version)
        calls.append(time.monotonic() - t0)
        in_flight.append(max(channel.in_flight().values()))
        poll()
    finished_at = time.monotonic()
    while len(channel.peers_finished()) < len(neighbours) and time.monotonic() - finished_at < 20:
        poll()
        time.sleep(0.005)
    while True:  # the final models may still be in the emulated link
        before = len(arrivals)
        poll()
        if len(arrivals) == before and all(any(a[0] == j and a[2] for a in arrivals) for j in neighbours):
            break
        time.sleep(0.005)
    t0 = time.monotonic()
    channel.close(timeout_s=10)
    close_s = time.monotonic() - t0
    torch.save({"calls": calls, "arrivals": arrivals, "in_flight": in_flight, "replaced": channel.replaced,
                "sent": dict(channel.sent.per_edge), "received": dict(channel.received.per_edge),
                "wire_nbytes": channel.wire_nbytes, "close_s": close_s, "neighbours": neighbours,
                "delay_s": link.delay_s(channel.wire_nbytes)}, out_path)
    close_world(world)


def channel_victim_worker(rank: int, world_size: int, args: dict, out_path: str) -> None:
    """Rank ``victim`` dies (or stalls) after a few sends; the others must raise a PeerError naming it."""
    from qtd.comm import AsyncNeighbourChannel, init_world
    from qtd.errors import PeerError

    world = init_world("gloo", timeout_s=args["timeout_s"])
    neighbours = sorted({(rank - 1) % world_size, (rank + 1) % world_size})
    channel = AsyncNeighbourChannel(world, neighbours, 64, max_in_flight=2)
    started = time.monotonic()
    message = torch.zeros(64, dtype=torch.uint8)
    try:
        for version in range(1, 100_000):
            if rank == args["victim"] and version == 20:
                if args["how"] == "die":
                    os._exit(9)
                time.sleep(args["timeout_s"] * 2)  # well past the neighbours' timeout, then leave
                os._exit(0)
            channel.send(message, version)
            channel.poll()
            time.sleep(0.01)
    except PeerError as exc:
        with open(out_path, "w") as handle:
            handle.write(f"{time.monotonic() - started:.3f}\n{exc}")
        os._exit(1)
    os._exit(0)
