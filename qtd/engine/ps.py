"""A worker's training loop in parameter-server mode (``mode: ps``), started by torchrun like a graph node.

Same run directory as decentralized runs (DESIGN.md §4): config.yaml, metrics.jsonl, summary.json,
TensorBoard (global + one run per worker), per-worker logs and checkpoints with ``run.resume: auto``.
``consensus_error`` is the replica drift: the mean squared distance of the replicas from their average,
computed in float64 so that identical replicas give exactly 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..comm import World, all_reduce_sum, ring_allreduce_bytes
from ..config import Config, ConfigError
from ..deadline import SpeedModel
from ..metrics import (JsonlWriter, ScalarLogger, load_node_checkpoint, node_file, prune_node_checkpoints,
                       save_node_checkpoint, write_json_atomic)
from ..models import FlatModel
from .node import NodeCounters, _per_node, _restore, _resume_iteration
from .problem import Problem, build_problem, evaluate_sum, make_gradient_step
from .ps_step import PSStep, algorithm_name, build_codec
from .run_files import RunFiles, flat_hparams
from .steps import GradientSource


@dataclass(frozen=True)
class PSEvalPoint:
    iteration: int
    epoch: float
    time_s: float
    eval_loss: float
    eval_accuracy: float
    consensus_error: float
    bytes_sent: int  # all workers' collective traffic so far
    upload_bytes: int  # all workers' compressed messages so far
    eval_bytes: int
    over_budget: bool


class PSEvaluator:
    """Collective: the replica drift (one float64 all-reduce, counted as eval_bytes) and the loss and
    accuracy of theta on the evaluation set, sharded over the workers."""

    def __init__(self, world: World, problem: Problem, samples_per_step: int) -> None:
        self.world, self.problem = world, problem
        self.shard = problem.eval_indices[world.rank::world.size]
        self.samples_per_epoch = len(problem.splits.train)
        self.samples_per_step = samples_per_step  # all workers together

    def __call__(self, flat: FlatModel, iteration: int, counters: NodeCounters, step: PSStep,
                 time_budget_s: float) -> PSEvalPoint:
        world = self.world
        what = f"evaluation at step {iteration}"
        theta = flat.params.detach().to(torch.float64)
        average = all_reduce_sum(theta.clone(), world, what).div_(world.size)
        counters.eval_bytes += ring_allreduce_bytes(theta.numel() * theta.element_size(), world.size)
        drift = float(((theta - average) ** 2).sum())
        loss_sum, correct, count = evaluate_sum(flat.module, self.problem.eval_set, self.shard, world.device)
        over = 1.0 if time_budget_s and counters.time_s >= time_budget_s else 0.0
        totals = torch.tensor([drift, loss_sum, correct, count, step.bytes_sent, step.upload_bytes,
                               counters.eval_bytes, counters.time_s, over], dtype=torch.float64, device=world.device)
        all_reduce_sum(totals, world, what)
        drift, loss, right, n, sent, upload, eval_bytes, time_sum, over_sum = totals.tolist()
        return PSEvalPoint(iteration=iteration, epoch=iteration * self.samples_per_step / self.samples_per_epoch,
                           time_s=time_sum / world.size, eval_loss=loss / max(n, 1), eval_accuracy=right / max(n, 1),
                           consensus_error=drift / world.size, bytes_sent=int(sent), upload_bytes=int(upload),
                           eval_bytes=int(eval_bytes), over_budget=over_sum > 0)


def build_ps_step(config: Config, world: World, flat: FlatModel, sampler) -> PSStep:
    emu, ps = config.emulation, config.ps
    speed_model = SpeedModel(emu.speed_distribution, emu.speed_low, emu.speed_high, emu.speeds, config.run.seed)
    speed_of = (lambda t: speed_model.speed(world.rank, t)) if emu.stragglers else (lambda t: None)
    gradients = GradientSource(flat, make_gradient_step(flat, sampler, world.device), world.device, speed_of,
                               ps.batch_size, None, ps.batch_size)
    return PSStep(world, flat, gradients, build_codec(ps, flat), ps)


def _worker_state(flat: FlatModel, sampler, step: PSStep, counters: NodeCounters) -> dict[str, Any]:
    return {"params": flat.params.detach().cpu().clone(), "sampler": sampler.state_dict(),
            "torch_rng": torch.get_rng_state(), "algorithm": step.state_dict(), "counters": counters.state_dict()}


def run_ps_node(config: Config, world: World) -> dict[str, Any] | None:
    """Train this process's worker; returns the run summary on rank 0 (None elsewhere)."""
    if config.topology.nodes != world.size:
        raise ConfigError(f"topology.nodes={config.topology.nodes} (the worker count in mode=ps) but {world.size} "
                          f"processes were started: set topology.nodes={world.size} or start "
                          f"{config.topology.nodes} processes (torchrun --nproc_per_node {config.topology.nodes})")
    run, rank = config.run, world.rank
    out = Path(run.out_dir)
    problem = build_problem(config)
    flat = problem.new_flat_model(world.device)
    sampler = problem.node_sampler(rank, run.seed)
    step = build_ps_step(config, world, flat, sampler)
    evaluator = PSEvaluator(world, problem, config.ps.batch_size * world.size)
    counters = NodeCounters()
    torch.manual_seed(run.seed * 7919 + rank)  # dropout randomness: one stream per worker

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    start = _resume_iteration(config, world)
    if start:
        path = node_file(out, start, rank)
        _restore(load_node_checkpoint(path, rank), path, flat, sampler, step, counters, world.device)
        step.check_replicas(start)

    name = algorithm_name(config.ps)
    files = RunFiles(config, rank, world.size, name, start)
    jsonl, global_tb, node_tb, node_log, progress = (files.metrics, files.global_tb, files.node_tb, files.node_log,
                                                     files.progress)
    point: PSEvalPoint | None = None
    try:
        iteration = start
        while iteration < run.iterations:
            stats = step.step(iteration)
            iteration += 1
            counters.time_s += stats.iteration_s
            counters.samples += stats.samples
            counters.iterations += 1
            node_log.write({"iteration": iteration, "time_s": counters.time_s, "samples": stats.samples,
                            "train_loss": stats.loss, "compute_s": stats.compute_s, "wait_s": stats.wait_s,
                            "lr": stats.lr, "upload_bytes": step.upload_bytes, "bytes_sent": step.bytes_sent,
                            "speed": stats.speed})
            node_tb.scalars({"node/train_loss": stats.loss, "node/samples": stats.samples,
                             "node/compute_s": stats.compute_s, "node/wait_s": stats.wait_s, "node/lr": stats.lr,
                             "node/upload_bytes": step.upload_bytes, "node/bytes_sent": step.bytes_sent,
                             **({"node/speed": stats.speed} if stats.speed else {})}, iteration)
            evaluate_now = iteration % run.eval_every == 0 or iteration == run.iterations
            if evaluate_now:
                point = evaluator(flat, iteration, counters, step, run.time_budget_s)
                if jsonl is not None:
                    _record(jsonl, global_tb, point, stats.lr)
            if run.checkpoint_every and iteration % run.checkpoint_every == 0 and iteration < run.iterations:
                save_node_checkpoint(out, iteration, rank, _worker_state(flat, sampler, step, counters))
                prune_node_checkpoints(out, rank, keep=2)
            progress.update(1, loss=f"{stats.loss:.3f}",
                            **({"acc": f"{point.eval_accuracy:.3f}"} if point is not None else {}))
            if evaluate_now and point is not None and point.over_budget:
                break
        if point is None or point.iteration != iteration:  # resumed at the very end: evaluate once more
            point = evaluator(flat, iteration, counters, step, run.time_budget_s)
        step.check_replicas(iteration)
        save_node_checkpoint(out, iteration, rank, _worker_state(flat, sampler, step, counters))
        prune_node_checkpoints(out, rank, keep=2)
        summary = _summarize(config, world, counters, step, point, iteration, name)
        if rank == 0:
            write_json_atomic(out / "summary.json", summary)
            global_tb.hparams(flat_hparams(config), {"hparam/eval_loss": point.eval_loss,
                                                     "hparam/eval_accuracy": point.eval_accuracy,
                                                     "hparam/time_s": point.time_s})
        return summary if rank == 0 else None
    finally:
        files.close()


def _record(jsonl: JsonlWriter, tb: ScalarLogger, point: PSEvalPoint, lr: float) -> None:
    jsonl.write({"iteration": point.iteration, "epoch": point.epoch, "time_s": point.time_s,
                 "eval_loss": point.eval_loss, "eval_accuracy": point.eval_accuracy,
                 "consensus_error": point.consensus_error, "bytes_sent": point.bytes_sent,
                 "upload_bytes": point.upload_bytes, "eval_bytes": point.eval_bytes, "lr": lr})
    tb.scalars({"eval/loss": point.eval_loss, "eval/accuracy": point.eval_accuracy,
                "eval/consensus_error": point.consensus_error, "comm/bytes_sent_total": point.bytes_sent,
                "comm/upload_bytes_total": point.upload_bytes, "time/train_s": point.time_s, "train/lr": lr,
                "train/epoch": point.epoch}, point.iteration)


def _summarize(config: Config, world: World, counters: NodeCounters, step: PSStep, point: PSEvalPoint,
               iteration: int, name: str) -> dict[str, Any]:
    mine = [counters.samples / max(counters.iterations, 1), float(step.bytes_sent), float(step.upload_bytes)]
    table = _per_node(mine, world)
    rows = [table[i * len(mine):(i + 1) * len(mine)] for i in range(world.size)]
    ps = config.ps
    summary = {
        "algorithm": name, "mode": "ps", "nodes": world.size, "iterations": iteration, "epochs": point.epoch,
        "time_s": point.time_s, "eval_loss": point.eval_loss, "eval_accuracy": point.eval_accuracy,
        "consensus_error": point.consensus_error, "bytes_sent": point.bytes_sent,
        "upload_bytes": point.upload_bytes, "eval_bytes": point.eval_bytes,
        "compressor": ps.compressor, "error_feedback": ps.error_feedback and ps.compressor != "none",
        "params": step.flat.numel,
        "k": step.codec.k if ps.compressor == "topk" else None,
        "value_bits": ps.value_bits if ps.compressor == "topk" else 32,
        "upload_bytes_per_step": step.message_nbytes,  # one worker's message, headers included
        "wire_bytes_per_step": step.wire_nbytes,  # what the collective moves out of one worker
        "samples_per_iteration": [round(r[0], 3) for r in rows],
        "bytes_sent_per_node": [int(r[1]) for r in rows],
        "upload_bytes_per_node": [int(r[2]) for r in rows],
        "backend": world.backend, "device": str(world.device),
    }
    if not math.isfinite(summary["eval_loss"]):
        summary["eval_loss"] = None
    return summary
