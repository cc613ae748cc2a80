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
    close_world(world)


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


def ps_worker(rank: int, world_size: int, args: dict, out_path: str) -> None:
    """Parameter-server steps for several configs in one process group, then two replica-drift checks.

    Saves, per case, the theta trajectory, the final AMSGrad state, the error-feedback residual, the
    float64 sums of this worker's gradients and of what its messages carried, and the byte counters.
    """
    from qtd.comm import close_world, init_world
    from qtd.config import load_config
    from qtd.algorithms import AMSGRAD_PS
    from qtd.engine.parts import build_parts
    from qtd.engine.steps import build_step
    from qtd.errors import ReplicaDriftError

    world = init_world("gloo", timeout_s=60)
    results: dict = {"cases": {}, "drift": []}
    step = flat = None
    for name, overrides in args["cases"].items():
        config = load_config(args["config"], overrides)
        parts = build_parts(config, world, AMSGRAD_PS)  # seeds this node's module randomness, as a run does
        flat, step = parts.flat, build_step(parts)
        grad_sum = torch.zeros(flat.numel, dtype=torch.float64)
        sent_sum = torch.zeros(flat.numel, dtype=torch.float64)
        trajectory = []
        for t in range(args["iterations"]):
            step.step(t)
            grad_sum += flat.grads.double()
            if step.codec is not None:
                sent_sum += step.codec.decode(step.gathered[rank], rank, t).double()
            trajectory.append(flat.params.detach().clone())
        residual = step.codec.residual if step.codec is not None else None
        results["cases"][name] = {
            "trajectory": trajectory, "m": step.state.m.clone(), "v": step.state.v.clone(),
            "v_hat": step.state.v_hat.clone(), "residual": None if residual is None else residual.clone(),
            "grad_sum": grad_sum, "sent_sum": sent_sum, "upload_bytes": step.upload_bytes,
            "bytes_sent": step.bytes_sent, "message_nbytes": step.message_nbytes}
    # one ulp of drift in theta on rank 2, then in v_hat on rank 1: every rank must detect each
    for victim, tensor in ((2, flat.params), (1, step.state.v_hat)):
        saved = tensor.clone()
        if rank == victim:
            with torch.no_grad():
                tensor[7] = torch.nextafter(tensor[7], torch.tensor(float("inf")))
        try:
            step.check_replicas(99)
            results["drift"].append("")
        except ReplicaDriftError as exc:
            results["drift"].append(str(exc))
        with torch.no_grad():
            tensor.copy_(saved)
    step.check_replicas(100)  # back in sync
    torch.save(results, out_path)
    close_world(world)


def data_only_outside_nodes(root: str = "", seed: int = 0):
    """A data factory (``data.name=tests.workers:data_only_outside_nodes``) whose data the launcher's check
    finds but no node does: what a data root visible only where the run was started looks like. It tests
    that a node failing at start ends the run with the node's message and one summary line."""
    from qtd.data.datasets import SYNTHETIC_CLASSES
    from qtd.errors import DataError

    if "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ:
        raise DataError(f"data.root={root!r} is not a directory on node {os.environ.get('RANK')}: the data "
                        "must be where every node runs")
    x = torch.randn(200, 4, generator=torch.Generator().manual_seed(seed))
    return x, torch.arange(200) % SYNTHETIC_CLASSES
