"""Functions run inside the processes that tests/harness.py starts (one per rank, gloo)."""

from __future__ import annotations

import os
import time

import torch


def _model(rank: int, numel: int) -> torch.Tensor:
    return torch.randn(numel, generator=torch.Generator().manual_seed(100 + rank)) * (rank + 1)


def exchange_worker(rank: int, world_size: int, args: dict, out_path: str) -> None:
    """Exchange encoded models for a few iterations; save what arrived from each neighbour."""
    from qtd.comm import LinkModel, NeighbourExchange, close_world, init_world
    from qtd.compress import encode_message, message_nbytes
    from qtd.config import TopologyConfig
    from qtd.topology import build_topology

    world = init_world("gloo", timeout_s=30)
    topology = build_topology(TopologyConfig(kind=args["kind"], nodes=world_size))
    view = topology.view(rank)
    numel, bits = args["numel"], args["bits"]
    link = LinkModel(latency_s=args.get("latency_s", 0.0))
    exchange = NeighbourExchange(world, view.neighbours, message_nbytes(numel, bits), link)
    received = {}
    started = time.monotonic()
    for iteration in range(args["iterations"]):
        x = _model(rank, numel) + iteration
        encode_message(x, bits, rank, iteration, seed=7, out=exchange.send_message)
        messages = exchange.wait(exchange.start(iteration))
        received[iteration] = {j: m.clone() for j, m in messages.items()}
    elapsed = time.monotonic() - started
    torch.save({"received": received, "sent_per_edge": exchange.sent.per_edge, "elapsed": elapsed,
                "neighbours": list(view.neighbours)}, out_path)
    close_world()


def failing_peer_worker(rank: int, world_size: int, args: dict, out_path: str) -> None:
    """Rank ``victim`` dies (or stalls) at iteration 2; every other rank must end with a PeerError."""
    from qtd.comm import NeighbourExchange, init_world
    from qtd.compress import encode_message, message_nbytes
    from qtd.errors import PeerError

    world = init_world("gloo", timeout_s=args["timeout_s"])
    neighbours = [(rank - 1) % world_size, (rank + 1) % world_size]
    exchange = NeighbourExchange(world, neighbours, message_nbytes(100, 4))
    started = time.monotonic()
    try:
        for iteration in range(50):
            if rank == args["victim"] and iteration == 2:
                if args["how"] == "die":
                    os._exit(9)
                time.sleep(args["timeout_s"] * 3)  # long past the neighbours' timeout, then leave
                os._exit(0)
            encode_message(torch.ones(100) * rank, 4, rank, iteration, out=exchange.send_message)
            exchange.wait(exchange.start(iteration))
    except PeerError as exc:
        with open(out_path, "w") as handle:
            handle.write(f"{time.monotonic() - started:.3f}\n{exc}")
        os._exit(1)
    os._exit(0)


def train_worker(rank: int, world_size: int, args: dict, out_path: str) -> None:
    """One node of a real run, exactly what `python -m qtd.train` does."""
    from qtd.train import main

    main(["--config", args["config"], *sum((["--set", o] for o in args.get("overrides", [])), [])])
