"""The training loop of one node of an asynchronous DSGD run (``algorithm.name: async_dsgd``).

Nodes never wait for each other while training. Evaluating the network-average model needs a
collective, so it happens at training times agreed in advance: checkpoint k is at
min(k * eval_every_s, run.time_budget_s) seconds of training. Each node pauses at its first iteration
boundary past a checkpoint, joins one all-reduce (the average model, the consensus error, the loss and
accuracy on the sharded evaluation set, and every node's counters), and resumes; the pause is taken out
of every node's training clock, so evaluation does not change how far a node gets in a given training
time. A node stops at its own budget (run.iterations of its own iterations, or run.time_budget_s of
training), sends its final model flagged FINAL and from then on only joins the checkpoints; the run
ends at the first checkpoint at which every node has stopped.

metrics.jsonl, one row per checkpoint: ``iteration`` is the mean over nodes of their own iteration
counts (floored), ``time_s`` the training time at which the evaluated models were all in place (the
latest model update of any node), ``eval_*`` and ``consensus_error`` those of the models at the pause,
``bytes_sent`` the algorithm bytes sent by all nodes so far; further keys give the per-node spread and
the staleness of the neighbour models used since the previous checkpoint.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..algorithms import step_sizes
from ..comm import (AsyncNeighbourChannel, LinkModel, World, all_reduce_sum, barrier, broadcast,
                    ring_allreduce_bytes)
from ..compress import message_nbytes
from ..config import Config, ConfigError, dump_config
from ..deadline import SpeedModel
from ..metrics import (JsonlWriter, ScalarLogger, complete_iterations, prune_node_checkpoints, save_node_checkpoint,
                       write_json_atomic)
from ..metrics.checkpoint import remove_checkpoints
from ..topology import build_topology
from .async_step import AsyncDSGDStep, AsyncStepStats, TrainingClock
from .problem import Problem, build_problem, evaluate_sum, make_gradient_step
from .run_files import RunFiles, flat_hparams
from .steps import GradientSource

# per-node counters gathered at every checkpoint, in this order
_TABLE = ("iterations", "clock_s", "last_update_s", "finished", "bytes_sent", "eval_bytes", "stale_iters_sum",
          "stale_s_sum", "stale_count", "stale_s_max", "stale_iters_max", "samples", "replaced",
          "deviation", "loss_sum", "correct", "count")


def eval_interval_s(config: Config) -> float:
    """Seconds of training between checkpoints (run.eval_every_s, or its documented default)."""
    run = config.run
    if run.eval_every_s > 0:
        return run.eval_every_s
    return run.time_budget_s / 10 if run.time_budget_s > 0 else 1.0


def checkpoint_time(k: int, every_s: float, budget_s: float) -> float:
    """Training time of checkpoint k >= 1; the time budget itself is always a checkpoint."""
    t = k * every_s
    if budget_s > 0 and (t >= budget_s or budget_s - t < 1e-9):
        return budget_s
    return t


def check_async_config(config: Config) -> None:
    """Reject settings under which a healthy node would look dead to its neighbours."""
    algo, emu, timeout = config.algorithm, config.emulation, config.comm.timeout_s
    if emu.stragglers:
        slowest = min(emu.speeds) if emu.speed_distribution == "fixed" else emu.speed_low
        if algo.batch_size / slowest > timeout / 2:
            raise ConfigError(
                f"comm.timeout_s={timeout:g} is too short for async_dsgd: the slowest emulated node needs "
                f"algorithm.batch_size / speed = {algo.batch_size / slowest:g} s per iteration, and a neighbour "
                "silent for comm.timeout_s counts as dead; raise comm.timeout_s above twice that")


@dataclass
class AsyncCounters:
    """One node's running totals; those since the previous checkpoint are reset there."""

    iterations: int = 0
    samples: int = 0
    eval_bytes: int = 0
    finished: bool = False
    finish_s: float = 0.0
    last_update_s: float = 0.0
    stale_iters_sum: float = 0.0
    stale_s_sum: float = 0.0
    stale_count: int = 0
    stale_s_max: float = 0.0
    stale_iters_max: int = 0
    total_stale_iters: float = 0.0
    total_stale_s: float = 0.0
    total_stale_count: int = 0

    def add(self, stats: AsyncStepStats, clock_s: float) -> None:
        self.iterations += 1
        self.samples += stats.samples
        self.last_update_s = clock_s
        for j, stale in stats.staleness_iters.items():
            seconds = stats.staleness_s[j]
            self.stale_iters_sum += stale
            self.stale_s_sum += seconds
            self.stale_count += 1
            self.stale_s_max = max(self.stale_s_max, seconds)
            self.stale_iters_max = max(self.stale_iters_max, stale)
            self.total_stale_iters += stale
            self.total_stale_s += seconds
            self.total_stale_count += 1

    def reset_interval(self) -> None:
        self.stale_iters_sum = self.stale_s_sum = self.stale_s_max = 0.0
        self.stale_count = self.stale_iters_max = 0


@dataclass(frozen=True)
class AsyncEvalPoint:
    round: int
    row: dict[str, Any]  # the metrics.jsonl row
    all_finished: bool
    table: np.ndarray  # nodes x len(_TABLE)


class AsyncEvaluator:
    """Collective: every node calls it at the same checkpoint. Averages the models (one all-reduce,
    counted as evaluation bytes), evaluates the average on this node's shard of the evaluation set and
    gathers every node's counters (a second, small all-reduce)."""

    def __init__(self, world: World, problem: Problem) -> None:
        self.world, self.problem = world, problem
        self.average = problem.new_flat_model(world.device)
        self.shard = problem.eval_indices[world.rank::world.size]

    def __call__(self, round_: int, x: torch.Tensor, counters: AsyncCounters, clock_s: float, bytes_sent: int,
                 replaced: int) -> AsyncEvalPoint:
        world = self.world
        what = f"evaluation at checkpoint {round_}"
        self.average.params.copy_(x.detach())
        all_reduce_sum(self.average.params, world, what)
        self.average.params.div_(world.size)
        counters.eval_bytes += ring_allreduce_bytes(x.numel() * x.element_size(), world.size)
        deviation = float(((x.detach() - self.average.params) ** 2).sum())
        loss_sum, correct, count = evaluate_sum(self.average.module, self.problem.eval_set, self.shard, world.device)
        mine = [counters.iterations, clock_s, counters.last_update_s, float(counters.finished), bytes_sent,
                counters.eval_bytes, counters.stale_iters_sum, counters.stale_s_sum, counters.stale_count,
                counters.stale_s_max, counters.stale_iters_max, counters.samples, replaced, deviation, loss_sum,
                correct, count]
        k = len(mine)
        table = torch.zeros(world.size * k, dtype=torch.float64, device=world.device)
        table[world.rank * k:(world.rank + 1) * k] = torch.tensor(mine, dtype=torch.float64)
        all_reduce_sum(table, world, what)
        t = table.cpu().numpy().reshape(world.size, k)
        col = {name: t[:, i] for i, name in enumerate(_TABLE)}
        n_eval = max(col["count"].sum(), 1.0)
        stale_n = max(col["stale_count"].sum(), 1.0)
        row = {
            "iteration": int(col["iterations"].mean()), "time_s": float(col["last_update_s"].max()),
            "eval_loss": float(col["loss_sum"].sum() / n_eval), "eval_accuracy": float(col["correct"].sum() / n_eval),
            "consensus_error": float(col["deviation"].mean()), "bytes_sent": int(col["bytes_sent"].sum()),
            "eval_bytes": int(col["eval_bytes"].sum()), "round": round_,
            "checkpoint_s": float(col["clock_s"].mean()),
            "iterations_min": int(col["iterations"].min()), "iterations_max": int(col["iterations"].max()),
            "nodes_finished": int(col["finished"].sum()),
            "staleness_iters_mean": float(col["stale_iters_sum"].sum() / stale_n),
            "staleness_iters_max": int(col["stale_iters_max"].max()),
            "staleness_s_mean": float(col["stale_s_sum"].sum() / stale_n),
            "staleness_s_max": float(col["stale_s_max"].max()),
        }
        return AsyncEvalPoint(round=round_, row=row, all_finished=bool(col["finished"].min() > 0), table=t)


def build_async_step(config: Config, world: World, flat, problem: Problem, topology, sampler) -> AsyncDSGDStep:
    """Collective (the channel creates its gloo group): every node builds its step at the same time."""
    algo, emu = config.algorithm, config.emulation
    # the DSGD rule has no consensus step: algorithm.eps does not apply (1 keeps step_sizes' check quiet)
    sizes = step_sizes(algo.schedule, algo.alpha, 1.0, config.run.iterations)
    speed_model = SpeedModel(emu.speed_distribution, emu.speed_low, emu.speed_high, emu.speeds, config.run.seed)
    speed_of = (lambda t: speed_model.speed(world.rank, t)) if emu.stragglers else (lambda t: None)
    link = LinkModel.from_copy_time(emu.comm_time_s, flat.numel, emu.link_latency_s) if emu.links else None
    gradients = GradientSource(flat, make_gradient_step(flat, sampler, world.device), world.device, speed_of,
                               algo.batch_size, None, algo.micro_batch_size)
    view = topology.view(world.rank)
    channel = AsyncNeighbourChannel(world, view.neighbours, message_nbytes(flat.numel, config.compression.bits),
                                    algo.max_in_flight, link, config.comm.timeout_s)
    return AsyncDSGDStep(world.rank, flat, gradients, view, config.compression.bits, sizes.alpha, config.run.seed,
                         channel)


def resume_refusal(config: Config, nodes: int) -> str | None:
    """Why this run cannot start in run.out_dir, or None. Asynchronous nodes stop at different
    iterations, so there is no common point to resume from; starting over silently would discard
    what the directory holds."""
    if config.run.resume == "auto" and complete_iterations(config.run.out_dir, nodes):
        return (f"run.out_dir={config.run.out_dir!r} holds checkpoints, and algorithm.name=async_dsgd does not "
                "resume (its nodes stop at different iterations): set run.resume=never to start over there, "
                "or choose another run.out_dir")
    return None


def _refuse_resume(config: Config, world: World) -> None:
    """Collective: rank 0 looks at run.out_dir, every node learns the verdict."""
    found = torch.zeros(1, dtype=torch.int64, device=world.device)
    if world.rank == 0:
        found[0] = resume_refusal(config, world.size) is not None
    broadcast(found, world, 0, "checking for checkpoints")
    if int(found[0]):
        raise ConfigError(resume_refusal(config, world.size) or "run.out_dir holds checkpoints")


def run_async_node(config: Config, world: World) -> dict[str, Any] | None:
    """Train this process's node asynchronously; returns the run summary on rank 0 (None elsewhere)."""
    check_async_config(config)
    run, rank = config.run, world.rank
    out = Path(run.out_dir)
    topology = build_topology(config.topology)
    problem = build_problem(config)
    flat = problem.new_flat_model(world.device)
    sampler = problem.node_sampler(rank, run.seed)
    torch.manual_seed(run.seed * 7919 + rank)
    _refuse_resume(config, world)
    if rank == 0:
        remove_checkpoints(out)  # starting over (resume_refusal allowed it): older ones would outrank ours
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_config(config))
    step = build_async_step(config, world, flat, problem, topology, sampler)
    evaluator = AsyncEvaluator(world, problem)
    counters = AsyncCounters()
    every_s, budget_s = eval_interval_s(config), run.time_budget_s

    files = RunFiles(config, rank, world.size, "async_dsgd")
    jsonl, global_tb, node_tb, node_log, progress = (files.metrics, files.global_tb, files.node_tb, files.node_log,
                                                     files.progress)
    wall_start = time.monotonic()
    point: AsyncEvalPoint | None = None
    try:
        barrier(world, "starting the asynchronous run")  # every training clock starts together
        clock = TrainingClock()
        step.start(clock)
        round_ = 0
        while True:
            now = clock.now()
            if not counters.finished and (counters.iterations >= run.iterations or (budget_s and now >= budget_s)):
                step.finish(counters.iterations)
                counters.finished, counters.finish_s = True, now
            due = checkpoint_time(round_ + 1, every_s, budget_s)
            if counters.finished and now < due:
                time.sleep(min(due - now, 0.02))  # idle until the agreed checkpoint; receiving goes on
                continue
            if now >= due:
                clock.pause()
                round_ += 1
                point = evaluator(round_, flat.params, counters, clock.now(), step.bytes_sent, step.channel.replaced)
                counters.reset_interval()
                if jsonl is not None:
                    jsonl.write(point.row)
                    global_tb.scalars({"eval/loss": point.row["eval_loss"], "eval/accuracy": point.row["eval_accuracy"],
                                       "eval/consensus_error": point.row["consensus_error"],
                                       "comm/bytes_sent_total": point.row["bytes_sent"],
                                       "time/train_s": point.row["time_s"],
                                       "async/staleness_iters_mean": point.row["staleness_iters_mean"],
                                       "async/staleness_s_mean": point.row["staleness_s_mean"],
                                       "async/staleness_s_max": point.row["staleness_s_max"],
                                       "async/iterations_min": point.row["iterations_min"],
                                       "async/iterations_max": point.row["iterations_max"]}, point.row["iteration"])
                clock.resume()
                if point.all_finished:
                    break
                continue
            stats = step.step(counters.iterations)
            counters.add(stats, clock.now())
            _log_iteration(node_log, node_tb, counters, stats, clock.now(), step)
            progress.update(1, loss=f"{stats.loss:.3f}")
        step.channel.close()
        save_node_checkpoint(out, round_, rank, _node_state(flat, sampler, counters, step))
        prune_node_checkpoints(out, rank, keep=1)
        summary = _summarize(config, world, point, counters, step, time.monotonic() - wall_start)
        if rank == 0:
            write_json_atomic(out / "summary.json", summary)
            global_tb.hparams(flat_hparams(config), {"hparam/eval_loss": point.row["eval_loss"],
                                                     "hparam/eval_accuracy": point.row["eval_accuracy"],
                                                     "hparam/time_s": point.row["time_s"]})
        return summary if rank == 0 else None
    except BaseException:
        step.channel.abort()
        raise
    finally:
        files.close()


def _log_iteration(node_log: JsonlWriter, node_tb: ScalarLogger, counters: AsyncCounters, stats: AsyncStepStats,
                   clock_s: float, step: AsyncDSGDStep) -> None:
    iteration = counters.iterations
    stale_i = {str(j): v for j, v in stats.staleness_iters.items()}
    stale_s = {str(j): round(v, 6) for j, v in stats.staleness_s.items()}
    node_log.write({"iteration": iteration, "time_s": clock_s, "samples": stats.samples, "train_loss": stats.loss,
                    "compute_s": stats.compute_s, "wait_s": stats.channel_s, "codec_s": stats.codec_s,
                    "bytes_sent": step.bytes_sent, "speed": stats.speed, "fresh": stats.fresh,
                    "staleness_iters": stale_i, "staleness_s": stale_s, "replaced": step.channel.replaced})
    scalars = {"node/train_loss": stats.loss, "node/samples": stats.samples, "node/compute_s": stats.compute_s,
               "node/wait_s": stats.channel_s, "node/bytes_sent": step.bytes_sent, "node/time_s": clock_s}
    if stats.speed:
        scalars["node/speed"] = stats.speed
    if stats.staleness_s:
        scalars["node/staleness_iters_mean"] = sum(stats.staleness_iters.values()) / len(stats.staleness_iters)
        scalars["node/staleness_s_mean"] = sum(stats.staleness_s.values()) / len(stats.staleness_s)
    for j in stats.staleness_s:
        scalars[f"node/staleness_iters/from_{j:03d}"] = stats.staleness_iters[j]
        scalars[f"node/staleness_s/from_{j:03d}"] = stats.staleness_s[j]
    node_tb.scalars(scalars, iteration)


def _node_state(flat, sampler, counters: AsyncCounters, step: AsyncDSGDStep) -> dict[str, Any]:
    neighbours = list(step.view.neighbours)
    return {"params": flat.params.detach().cpu().clone(), "sampler": sampler.state_dict(),
            "torch_rng": torch.get_rng_state(), "iterations": counters.iterations,
            "neighbours": torch.tensor(neighbours, dtype=torch.int64),
            "neighbour_versions": torch.tensor([step.version[j] for j in neighbours], dtype=torch.int64),
            "neighbour_models": torch.stack([step.latest[j].cpu() for j in neighbours]) if neighbours
            else torch.zeros(0)}


def _summarize(config: Config, world: World, point: AsyncEvalPoint, counters: AsyncCounters,
               step: AsyncDSGDStep, wall_s: float) -> dict[str, Any]:
    t = point.table
    col = {name: t[:, i] for i, name in enumerate(_TABLE)}
    row = point.row
    total_stale = [counters.total_stale_iters, counters.total_stale_s, counters.total_stale_count, counters.finish_s]
    k = len(total_stale)
    table = torch.zeros(world.size * k, dtype=torch.float64, device=world.device)
    table[world.rank * k:(world.rank + 1) * k] = torch.tensor(total_stale, dtype=torch.float64)
    all_reduce_sum(table, world, "collecting the run summary")
    s = table.cpu().numpy().reshape(world.size, k)
    uses = max(s[:, 2].sum(), 1.0)
    summary = {
        "algorithm": config.algorithm.name, "mode": config.mode, "nodes": world.size,
        "iterations": row["iteration"], "time_s": row["time_s"], "eval_loss": row["eval_loss"],
        "eval_accuracy": row["eval_accuracy"], "consensus_error": row["consensus_error"],
        "bytes_sent": row["bytes_sent"], "eval_bytes": row["eval_bytes"], "bits": config.compression.bits,
        "iterations_per_node": [int(v) for v in col["iterations"]],
        "finish_time_s_per_node": [round(float(v), 4) for v in s[:, 3]],
        "samples_per_iteration": [round(float(v), 3) for v in col["samples"] / np.maximum(col["iterations"], 1)],
        "bytes_sent_per_node": [int(v) for v in col["bytes_sent"]],
        "replaced_messages": int(col["replaced"].sum()),
        "staleness_iters_mean": float(s[:, 0].sum() / uses), "staleness_s_mean": float(s[:, 1].sum() / uses),
        "evaluations": point.round, "eval_every_s": eval_interval_s(config), "wall_s": wall_s,
        "max_in_flight": config.algorithm.max_in_flight, "backend": world.backend, "device": str(world.device),
    }
    if not math.isfinite(summary["eval_loss"]):
        summary["eval_loss"] = None
    return summary
