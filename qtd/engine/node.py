"""A node's training loop for real runs: one process per graph node, started by torchrun.

``run_node`` builds everything the node needs from the config, trains, evaluates the network-average
model every ``run.eval_every`` iterations, checkpoints, and writes the run directory (DESIGN.md §4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..algorithms import step_sizes
from ..comm import LinkModel, World, all_reduce_sum, broadcast, ring_allreduce_bytes
from ..config import Config, ConfigError
from ..deadline import SpeedModel
from ..errors import CheckpointError
from ..metrics import (complete_iterations, load_node_checkpoint, node_file, prune_node_checkpoints,
                       save_node_checkpoint, write_json_atomic)
from ..models import FlatModel
from ..topology import build_topology
from .async_node import run_async_node
from .problem import Problem, build_problem, evaluate_sum, make_gradient_step
from .run_files import RunFiles, flat_hparams
from .steps import AllReduceStep, GossipStep, GradientSource, StepStats


@dataclass
class NodeCounters:
    """Running totals of one node, checkpointed with it."""

    time_s: float = 0.0  # training wall-clock time, evaluation and checkpoint pauses excluded
    samples: int = 0
    iterations: int = 0
    eval_bytes: int = 0
    overshoot_s: list[float] = field(default_factory=list)  # compute phase beyond the deadline, per iteration
    micro_batch_s: list[float] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return {"time_s": self.time_s, "samples": self.samples, "iterations": self.iterations,
                "eval_bytes": self.eval_bytes,
                "overshoot_s": torch.tensor(self.overshoot_s, dtype=torch.float64),
                "micro_batch_s": torch.tensor(self.micro_batch_s, dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.time_s, self.samples = float(state["time_s"]), int(state["samples"])
        self.iterations, self.eval_bytes = int(state["iterations"]), int(state["eval_bytes"])
        self.overshoot_s = state["overshoot_s"].tolist()
        self.micro_batch_s = state["micro_batch_s"].tolist()


@dataclass(frozen=True)
class EvalPoint:
    iteration: int
    time_s: float
    eval_loss: float
    eval_accuracy: float
    consensus_error: float
    bytes_sent: int
    eval_bytes: int
    over_budget: bool


def build_step(config: Config, world: World, flat: FlatModel, problem: Problem, topology, sampler):
    """The algorithm's step object for this node (the node's only algorithm-specific piece)."""
    algo, emu = config.algorithm, config.emulation
    quantized = algo.name in ("quantimed", "qdsgd")
    sizes = step_sizes(algo.schedule, algo.alpha, algo.eps if quantized else 1.0, config.run.iterations)
    speed_model = SpeedModel(emu.speed_distribution, emu.speed_low, emu.speed_high, emu.speeds, config.run.seed)
    speed_of = (lambda t: speed_model.speed(world.rank, t)) if emu.stragglers else (lambda t: None)
    link = LinkModel.from_copy_time(emu.comm_time_s, flat.numel, emu.link_latency_s) if emu.links else None
    deadline = algo.deadline_s if algo.name == "quantimed" else None
    gradients = GradientSource(flat, make_gradient_step(flat, sampler, world.device), world.device, speed_of,
                               algo.batch_size, deadline, algo.micro_batch_size)
    if algo.name == "allreduce_sgd":
        return AllReduceStep(world, flat, gradients, sizes.alpha, link)
    if algo.name in ("quantimed", "qdsgd", "dsgd"):
        consensus = "exact" if algo.name == "dsgd" else "quantized"
        return GossipStep(world, flat, gradients, topology.view(world.rank), config.compression.bits,
                          sizes.alpha, sizes.eps, consensus, algo.overlap, config.run.seed, link)
    raise ConfigError(f"algorithm.name={algo.name!r} does not run in the synchronous engine; "
                      "use quantimed, qdsgd, dsgd or allreduce_sgd (async_dsgd runs in run_async_node)")


class Evaluator:
    """Collective: the network-average model (one all-reduce, counted apart from the algorithm's bytes),
    its loss and accuracy on the evaluation set (sharded over the nodes) and the consensus error."""

    def __init__(self, world: World, problem: Problem) -> None:
        self.world, self.problem = world, problem
        self.average = problem.new_flat_model(world.device)
        self.shard = problem.eval_indices[world.rank::world.size]

    def __call__(self, flat: FlatModel, iteration: int, counters: NodeCounters, bytes_sent: int,
                 time_budget_s: float) -> EvalPoint:
        world = self.world
        what = f"evaluation at iteration {iteration}"
        x = flat.params.detach()
        self.average.params.copy_(x)
        all_reduce_sum(self.average.params, world, what)
        self.average.params.div_(world.size)
        counters.eval_bytes += ring_allreduce_bytes(x.numel() * x.element_size(), world.size)
        deviation = float(((x - self.average.params) ** 2).sum())
        loss_sum, correct, count = evaluate_sum(self.average.module, self.problem.eval_set, self.shard, world.device)
        over = 1.0 if time_budget_s and counters.time_s >= time_budget_s else 0.0
        totals = torch.tensor([deviation, loss_sum, correct, count, bytes_sent, counters.eval_bytes,
                               counters.time_s, over], dtype=torch.float64, device=world.device)
        all_reduce_sum(totals, world, what)
        dev, loss, right, n, sent, eval_bytes, time_sum, over_sum = totals.tolist()
        return EvalPoint(iteration=iteration, time_s=time_sum / world.size, eval_loss=loss / max(n, 1),
                         eval_accuracy=right / max(n, 1), consensus_error=dev / world.size,
                         bytes_sent=int(sent), eval_bytes=int(eval_bytes), over_budget=over_sum > 0)


def _resume_iteration(config: Config, world: World) -> int:
    """Rank 0 picks the newest checkpoint every node completed; all nodes agree by broadcast."""
    found = torch.zeros(1, dtype=torch.int64, device=world.device)
    if world.rank == 0 and config.run.resume == "auto":
        done = complete_iterations(config.run.out_dir, world.size)
        found[0] = done[-1] if done else 0
    broadcast(found, world, 0, "agreeing on the checkpoint to resume from")
    return int(found[0])


def _node_state(flat: FlatModel, sampler, algorithm, counters: NodeCounters) -> dict[str, Any]:
    return {"params": flat.params.detach().cpu().clone(), "sampler": sampler.state_dict(),
            "torch_rng": torch.get_rng_state(), "algorithm": algorithm.state_dict(),
            "counters": counters.state_dict()}


def _restore(state: dict[str, Any], path: Path, flat: FlatModel, sampler, algorithm, counters: NodeCounters,
             device: torch.device) -> None:
    """Load a node checkpoint into this run; CheckpointError when it was written by a different run setup."""
    params = state.get("params")
    if not isinstance(params, torch.Tensor) or params.shape != flat.params.shape:
        size = f"{params.numel()} parameters" if isinstance(params, torch.Tensor) else "no model"
        raise CheckpointError(f"checkpoint {str(path)!r} holds {size} but this config's model has "
                              f"{flat.params.numel()}: it comes from a run with another model; use a new "
                              "run.out_dir or set run.resume=never")
    try:
        with torch.no_grad():
            flat.params.copy_(params.to(device))
        sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        algorithm.load_state_dict(state["algorithm"])
        counters.load_state_dict(state["counters"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit this run ({type(exc).__name__}: {exc}); it "
                              "was written with another config or qtd version: use a new run.out_dir or set "
                              "run.resume=never") from None


def run_node(config: Config, world: World) -> dict[str, Any] | None:
    """Train this process's node; returns the run summary on rank 0 (None elsewhere)."""
    if config.mode == "ps":
        from .ps import run_ps_node  # imports this module's helpers: import here, not at the top
        return run_ps_node(config, world)
    if config.topology.nodes != world.size:
        raise ConfigError(f"topology.nodes={config.topology.nodes} but {world.size} processes were started: "
                          f"set topology.nodes={world.size} or start {config.topology.nodes} processes "
                          f"(torchrun --nproc_per_node {config.topology.nodes})")
    if config.algorithm.name == "async_dsgd":
        return run_async_node(config, world)
    run, rank = config.run, world.rank
    out = Path(run.out_dir)
    topology = build_topology(config.topology)
    problem = build_problem(config)
    flat = problem.new_flat_model(world.device)
    sampler = problem.node_sampler(rank, run.seed)
    algorithm = build_step(config, world, flat, problem, topology, sampler)
    evaluator = Evaluator(world, problem)
    counters = NodeCounters()
    torch.manual_seed(run.seed * 7919 + rank)  # dropout and other module randomness, per node

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    start = _resume_iteration(config, world)
    if start:
        path = node_file(out, start, rank)
        _restore(load_node_checkpoint(path, rank), path, flat, sampler, algorithm, counters, world.device)

    files = RunFiles(config, rank, world.size, config.algorithm.name, start)
    jsonl, global_tb, node_tb, node_log, progress = (files.metrics, files.global_tb, files.node_tb, files.node_log,
                                                     files.progress)
    point: EvalPoint | None = None
    deadline = config.algorithm.deadline_s if config.algorithm.name == "quantimed" else None
    try:
        iteration = start
        while iteration < run.iterations:
            stats: StepStats = algorithm.step(iteration)
            iteration += 1
            counters.time_s += stats.iteration_s
            counters.samples += stats.samples
            counters.iterations += 1
            if deadline is not None:
                counters.overshoot_s.append(stats.compute_s - deadline)
                if stats.micro_batches:
                    counters.micro_batch_s.append(stats.busy_s / stats.micro_batches)
            row = {"iteration": iteration, "time_s": counters.time_s, "samples": stats.samples,
                   "train_loss": stats.loss, "compute_s": stats.compute_s, "wait_s": stats.wait_s,
                   "bytes_sent": algorithm.bytes_sent, "speed": stats.speed}
            node_log.write(row)
            node_tb.scalars({"node/train_loss": stats.loss, "node/samples": stats.samples,
                             "node/compute_s": stats.compute_s, "node/wait_s": stats.wait_s,
                             "node/bytes_sent": algorithm.bytes_sent,
                             **({"node/speed": stats.speed} if stats.speed else {})}, iteration)
            evaluate_now = iteration % run.eval_every == 0 or iteration == run.iterations
            if evaluate_now:
                point = evaluator(flat, iteration, counters, algorithm.bytes_sent, run.time_budget_s)
                if jsonl is not None:
                    record = {"iteration": point.iteration, "time_s": point.time_s, "eval_loss": point.eval_loss,
                              "eval_accuracy": point.eval_accuracy, "consensus_error": point.consensus_error,
                              "bytes_sent": point.bytes_sent, "eval_bytes": point.eval_bytes}
                    jsonl.write(record)
                    global_tb.scalars({"eval/loss": point.eval_loss, "eval/accuracy": point.eval_accuracy,
                                       "eval/consensus_error": point.consensus_error,
                                       "comm/bytes_sent_total": point.bytes_sent, "time/train_s": point.time_s},
                                      iteration)
            if run.checkpoint_every and iteration % run.checkpoint_every == 0 and iteration < run.iterations:
                save_node_checkpoint(out, iteration, rank, _node_state(flat, sampler, algorithm, counters))
                prune_node_checkpoints(out, rank, keep=2)
            progress.update(1, loss=f"{stats.loss:.3f}",
                            **({"eval": f"{point.eval_loss:.3f}"} if point is not None else {}))
            if evaluate_now and point is not None and point.over_budget:
                break
        if point is None or point.iteration != iteration:  # resumed at the very end: evaluate once more
            point = evaluator(flat, iteration, counters, algorithm.bytes_sent, run.time_budget_s)
        save_node_checkpoint(out, iteration, rank, _node_state(flat, sampler, algorithm, counters))
        prune_node_checkpoints(out, rank, keep=2)
        summary = _summarize(config, world, counters, algorithm, point, iteration)
        if rank == 0:
            write_json_atomic(out / "summary.json", summary)
            global_tb.hparams(flat_hparams(config), {"hparam/eval_loss": point.eval_loss,
                                                     "hparam/eval_accuracy": point.eval_accuracy,
                                                     "hparam/time_s": point.time_s})
        return summary if rank == 0 else None
    finally:
        files.close()


def _per_node(values: list[float], world: World) -> list[float]:
    """Collective: every node contributes ``values``; returns all nodes' values, node-major."""
    k = len(values)
    table = torch.zeros(world.size * k, dtype=torch.float64, device=world.device)
    table[world.rank * k:(world.rank + 1) * k] = torch.tensor(values, dtype=torch.float64)
    all_reduce_sum(table, world, "collecting the run summary")
    return table.cpu().tolist()


def _summarize(config: Config, world: World, counters: NodeCounters, algorithm, point: EvalPoint,
               iteration: int) -> dict[str, Any]:
    iters = max(counters.iterations, 1)
    overshoot = float(np.percentile(counters.overshoot_s, 99)) if counters.overshoot_s else 0.0
    micro = float(np.percentile(counters.micro_batch_s, 99)) if counters.micro_batch_s else 0.0
    mine = [counters.samples / iters, float(algorithm.bytes_sent), overshoot, micro]
    table = np.array(_per_node(mine, world)).reshape(world.size, len(mine))
    summary = {
        "algorithm": config.algorithm.name, "mode": config.mode, "nodes": world.size, "iterations": iteration,
        "time_s": point.time_s, "eval_loss": point.eval_loss, "eval_accuracy": point.eval_accuracy,
        "consensus_error": point.consensus_error, "bytes_sent": point.bytes_sent,
        "eval_bytes": point.eval_bytes, "bits": config.compression.bits,
        "samples_per_iteration": [round(v, 3) for v in table[:, 0]],
        "bytes_sent_per_node": [int(v) for v in table[:, 1]],
        "backend": world.backend, "device": str(world.device),
    }
    if config.algorithm.name == "quantimed":
        summary["deadline_s"] = config.algorithm.deadline_s
        summary["deadline_overshoot_p99_s"] = float(table[:, 2].max())
        summary["micro_batch_p99_s"] = float(table[:, 3].max())
    if not math.isfinite(summary["eval_loss"]):
        summary["eval_loss"] = None
    return summary
