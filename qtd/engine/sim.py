"""The virtual-time simulator: all n nodes in one process, on the paper's clock (DESIGN.md section 2).

Every node has its own model (a row of an (n, p) stack), its own local data and sampler
(``Problem.node_sampler``, as in a real run), its own quantizer stream (the wire message a real node
would send, keyed by run seed, sender and iteration: :mod:`.sim_messages`) and its own speed V_{i,t}
(:class:`qtd.deadline.SpeedModel`, always the configured distribution). The update rules are the pure
functions of :mod:`qtd.algorithms` that real runs call, applied to the whole stack at once; the mixing
step sum_{j in N_i} w_ij z_j of every node is one matrix product.

Instead of sleeping, a virtual clock advances by the time model of :mod:`.sim_time`. A deadline-bound
node computes floor(V_{i,t} * T_d) samples; a fixed-batch node B. Asynchronous DSGD runs as a queue of
events, one per node step, processed in order of virtual time (ties: lower node id first): at its event
node j takes the DSGD step with the newest model it holds from each neighbour, then its new model is what
its neighbours hold from that instant on (the T_c of sending it is charged to j's own pace).

``run.iterations`` is the number of synchronous iterations; for async DSGD it is the number of rounds of n
events (the mean local step count), so the gradient work matches a synchronous run of the same length.
``run.time_budget_s``, when set, stops the run once the virtual clock reaches it. The simulator always
starts over (``run.resume`` and ``run.checkpoint_every`` apply to real runs): a run takes minutes.
"""

from __future__ import annotations

import heapq
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..algorithms import async_dsgd_update, consensus_error, dsgd_update, quantimed_update, sgd_update, step_sizes
from ..comm.links import ring_allreduce_bytes
from ..config import Config, ConfigError
from ..deadline import SpeedModel, deadline_samples
from ..metrics import Progress
from ..topology import build_topology
from .problem import Problem, build_problem, evaluate_sum
from .run_files import flat_hparams
from .sim_grads import LoopGradients, build_gradients, micro_batches
from .sim_messages import MessageCodec
from .sim_outputs import SimRecorder
from .sim_time import FLOAT32_BYTES, TimeModel

SYNC_ALGORITHMS = ("quantimed", "qdsgd", "dsgd", "allreduce_sgd")


@dataclass
class SimResult:
    models: Tensor  # (n, p): every node's final model
    rows: list[dict[str, Any]]  # the metrics.jsonl rows
    summary: dict[str, Any]  # what summary.json holds
    samples: list[list[int]]  # samples[i][k]: samples node i computed in its k-th iteration (or async step)
    events: list[tuple[float, int]] = field(default_factory=list)  # async: (virtual end time, node) per step


@dataclass
class _Clock:
    time_s: float = 0.0
    bytes_sent: int = 0
    evaluations: int = 0


class _Evaluator:
    """The network-average model's loss and accuracy on the evaluation set, and the consensus error.

    Evaluation costs no virtual time; ``eval_bytes`` counts what a real run's evaluation all-reduce sends.
    """

    def __init__(self, problem: Problem, device: torch.device, nodes: int, numel: int) -> None:
        self.problem = problem
        self.flat = problem.new_flat_model(device)
        self.device = device
        self.bytes_per_evaluation = nodes * ring_allreduce_bytes(FLOAT32_BYTES * numel, nodes)

    def __call__(self, models: Tensor, iteration: int, clock: _Clock) -> dict[str, Any]:
        clock.evaluations += 1
        with torch.no_grad():
            self.flat.params.copy_(models.mean(dim=0))
        finite = bool(torch.isfinite(self.flat.params).all())
        if finite:
            loss_sum, correct, count = evaluate_sum(self.flat.module, self.problem.eval_set,
                                                    self.problem.eval_indices, self.device)
            loss, accuracy = loss_sum / max(count, 1), correct / max(count, 1)
        else:
            loss, accuracy = float("nan"), float("nan")
        return {"iteration": iteration, "time_s": clock.time_s, "eval_loss": loss, "eval_accuracy": accuracy,
                "consensus_error": consensus_error(models) if finite else float("nan"),
                "bytes_sent": clock.bytes_sent, "eval_bytes": clock.evaluations * self.bytes_per_evaluation}


class Simulation:
    """One simulated run: build with a config, then :meth:`run`."""

    def __init__(self, config: Config, *, write: bool = True, node_logs: bool = True,
                 gradient_mode: str = "auto", device: torch.device | None = None,
                 progress: bool | None = None, stop_at_loss: float | None = None) -> None:
        if config.mode != "decentralized":
            raise ConfigError(f"mode={config.mode!r}: qtd sim simulates the decentralized algorithms; "
                              "run parameter-server mode with qtd launch")
        self.config = config
        self.algorithm = config.algorithm.name
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.topology = build_topology(config.topology)
        self.problem = build_problem(config)
        self.n = config.topology.nodes
        seed = config.run.seed
        self.samplers = [self.problem.node_sampler(i, seed) for i in range(self.n)]
        train = self.problem.splits.train
        if self.algorithm == "async_dsgd":  # one node at a time: the real engine's per-node step
            self.gradients: Any = LoopGradients(self.problem.template, self.samplers, self.device)
        else:
            dataset = train.to(self.device) if self.device.type != "cpu" else train
            self.gradients = build_gradients(self.problem.template, dataset, self.samplers, self.device,
                                             gradient_mode)
        start = self.problem.new_flat_model(self.device).params.detach()
        self.numel = start.numel()
        self.models = start.unsqueeze(0).repeat(self.n, 1).contiguous()
        mixing = torch.tensor(self.topology.mixing, dtype=torch.float32, device=self.device)
        self.self_weights = mixing.diagonal().clone()
        self.neighbour_mixing = mixing - torch.diag(self.self_weights)  # row i: w_ij for j in N_i, 0 elsewhere
        self.degrees = [len(self.topology.view(i).neighbours) for i in range(self.n)]
        algo, emu = config.algorithm, config.emulation
        self.sizes = step_sizes(algo.schedule, algo.alpha, algo.eps, config.run.iterations)
        self.speeds = SpeedModel(emu.speed_distribution, emu.speed_low, emu.speed_high, emu.speeds, seed)
        self.time = TimeModel(emu.comm_time_s, emu.link_latency_s, self.n, self.numel, algo.overlap)
        self.bits = config.compression.bits
        self.codec = MessageCodec(self.numel, self.bits, seed, self.device)
        self.evaluate = _Evaluator(self.problem, self.device, self.n, self.numel)
        self.recorder = SimRecorder(config, write=write, node_logs=node_logs)
        self.show_progress = config.run.progress if progress is None else progress
        self.clock = _Clock()
        self.node_bytes = [0] * self.n
        self.samples: list[list[int]] = [[] for _ in range(self.n)]
        self.node_speeds: list[list[float]] = [[] for _ in range(self.n)]
        self.rows: list[dict[str, Any]] = []
        self.events: list[tuple[float, int]] = []
        self.diverged_at: int | None = None
        self.stop_at_loss = stop_at_loss  # sweeps: stop at the first evaluation at or below this loss
        self.reached_target = False

    # -- synchronous algorithms ------------------------------------------------------------------------

    def _sync_iteration(self, t: int, decoded: Tensor) -> None:
        algo, n = self.config.algorithm, self.n
        speeds = self.speeds.speeds_at(n, t).tolist()
        if self.algorithm == "quantimed":
            counts = [deadline_samples(v, algo.deadline_s) for v in speeds]
            grads, losses = self.gradients(self.models, counts, algo.micro_batch_size)
            compute = [algo.deadline_s] * n
            step_s = self.time.quantimed_iteration_s(algo.deadline_s, self.bits)
        else:
            counts = [algo.batch_size] * n
            grads, losses = self.gradients(self.models, counts, None)
            compute = [algo.batch_size / v for v in speeds]
            if self.algorithm == "allreduce_sgd":
                step_s = self.time.allreduce_iteration_s(algo.batch_size, speeds)
            else:
                step_s = self.time.gossip_iteration_s(algo.batch_size, speeds, self.bits)
        x = self.models
        with torch.no_grad():
            if self.algorithm == "allreduce_sgd":
                sent = ring_allreduce_bytes(FLOAT32_BYTES * self.numel, n)
                new = sgd_update(x, grads.mean(dim=0, keepdim=True), self.sizes.alpha)
                sent_per_node = [sent] * n
            else:
                self.codec.all(x, t, out=decoded)
                mixed = self.neighbour_mixing @ decoded
                if self.algorithm == "dsgd":
                    new = dsgd_update(x, mixed, self.self_weights, grads, self.sizes.alpha)
                else:
                    new = quantimed_update(x, mixed, self.self_weights, grads, self.sizes.alpha, self.sizes.eps)
                sent_per_node = [d * self.codec.nbytes for d in self.degrees]
            x.copy_(new)
        self.clock.time_s += step_s
        self.clock.bytes_sent += sum(sent_per_node)
        for i in range(n):
            self.node_bytes[i] += sent_per_node[i]
            self.samples[i].append(counts[i])
            self.node_speeds[i].append(speeds[i])
            self.recorder.node(i, t + 1, {
                "iteration": t + 1, "time_s": self.clock.time_s, "samples": counts[i],
                "train_loss": float(losses[i]) / counts[i] if counts[i] else float("nan"),
                "compute_s": compute[i], "wait_s": step_s - compute[i], "bytes_sent": self.node_bytes[i],
                "speed": speeds[i]})

    def _run_sync(self, progress: Progress) -> int:
        run = self.config.run
        decoded = torch.empty_like(self.models)
        iteration = 0
        while iteration < run.iterations:
            self._sync_iteration(iteration, decoded)
            iteration += 1
            finite = math.isfinite(float(self.models.sum()))  # one reduction: NaN or inf anywhere shows
            over = bool(run.time_budget_s) and self.clock.time_s >= run.time_budget_s
            if iteration % run.eval_every == 0 or iteration == run.iterations or over or not finite:
                self._evaluate(iteration)
            progress.update(1, **self._postfix())
            if not finite:
                self.diverged_at = iteration
                break
            if over or self.reached_target:
                break
        return iteration

    # -- asynchronous DSGD -----------------------------------------------------------------------------

    def _async_pace(self, node: int, step: int) -> tuple[float, float]:
        speed = self.speeds.speed(node, step)
        return self.time.async_step_s(self.config.algorithm.batch_size, speed, self.bits), speed

    def _run_async(self, progress: Progress) -> int:
        run, n = self.config.run, self.n
        batch = self.config.algorithm.batch_size
        held = self.models.clone()  # held[j]: node j's newest model as its neighbours decode it
        steps = [0] * n
        queue = []
        pending_speed = [0.0] * n
        for j in range(n):
            pace, pending_speed[j] = self._async_pace(j, 0)
            heapq.heappush(queue, (pace, j))
        total, events, rounds = n * run.iterations, 0, 0
        while events < total:
            when, j = heapq.heappop(queue)
            if run.time_budget_s and when > run.time_budget_s:
                break
            k = steps[j]
            grad, loss_sum = self.gradients.node(j, self.models[j], [batch])
            with torch.no_grad():
                mixed = self.neighbour_mixing[j] @ held
                self.models[j].copy_(async_dsgd_update(self.models[j], mixed, self.self_weights[j], grad,
                                                       self.sizes.alpha))
                finite = math.isfinite(float(self.models[j].sum()))
                if finite:
                    self.codec.node(self.models[j], j, k, out=held[j])
            steps[j] += 1
            events += 1
            self.clock.time_s = when
            self.events.append((when, j))
            sent = self.degrees[j] * self.codec.nbytes
            self.node_bytes[j] += sent
            self.clock.bytes_sent += sent
            self.samples[j].append(batch)
            self.node_speeds[j].append(pending_speed[j])
            self.recorder.node(j, steps[j], {
                "iteration": steps[j], "time_s": when, "samples": batch, "train_loss": loss_sum / batch,
                "compute_s": batch / pending_speed[j], "wait_s": 0.0, "bytes_sent": self.node_bytes[j],
                "speed": pending_speed[j]})
            pace, pending_speed[j] = self._async_pace(j, steps[j])
            heapq.heappush(queue, (when + pace, j))
            if not finite:
                self.diverged_at = events // n
                self._evaluate(events // n)
                break
            if events % n == 0:
                rounds += 1
                progress.update(1, **self._postfix())
                if rounds % run.eval_every == 0 or events == total:
                    self._evaluate(rounds)
                    if self.reached_target:
                        break
        if not self.rows or self.rows[-1]["iteration"] != events // n or self.rows[-1]["time_s"] != self.clock.time_s:
            self._evaluate(events // n)
        return events // n

    # -- common ----------------------------------------------------------------------------------------

    def _evaluate(self, iteration: int) -> None:
        row = self.evaluate(self.models, iteration, self.clock)
        if self.stop_at_loss is not None and row["eval_loss"] <= self.stop_at_loss:
            self.reached_target = True
        self.rows.append(row)
        self.recorder.evaluation(row)

    def _postfix(self) -> dict[str, str]:
        if not self.rows:
            return {"t": f"{self.clock.time_s:.0f}s"}
        return {"t": f"{self.clock.time_s:.0f}s", "loss": f"{self.rows[-1]['eval_loss']:.3f}"}

    def run(self) -> SimResult:
        wall = time.perf_counter()
        progress = Progress(self.config.run.iterations, enabled=self.show_progress,
                            desc=f"sim {self.algorithm} x{self.n}")
        try:
            if self.algorithm == "async_dsgd":
                iterations = self._run_async(progress)
            else:
                iterations = self._run_sync(progress)
            summary = self._summary(iterations, time.perf_counter() - wall)
            self.recorder.finish(summary, self.models, flat_hparams(self.config))
        finally:
            progress.close()
            self.recorder.close()
        if self.diverged_at is not None:
            warnings.warn(f"the models diverged (non-finite values) at iteration {self.diverged_at}: lower "
                          "algorithm.alpha or algorithm.eps", stacklevel=2)
        return SimResult(models=self.models, rows=self.rows, summary=summary, samples=self.samples,
                         events=self.events)

    def _summary(self, iterations: int, wall_s: float) -> dict[str, Any]:
        last = self.rows[-1]
        algo = self.config.algorithm
        steps = [len(s) for s in self.samples]
        summary: dict[str, Any] = {
            "algorithm": self.algorithm, "mode": self.config.mode, "nodes": self.n, "iterations": iterations,
            "time_s": last["time_s"], "eval_loss": _finite_or_none(last["eval_loss"]),
            "eval_accuracy": _finite_or_none(last["eval_accuracy"]),
            "consensus_error": _finite_or_none(last["consensus_error"]), "bytes_sent": last["bytes_sent"],
            "eval_bytes": last["eval_bytes"], "bits": self.bits,
            "samples_per_iteration": [round(sum(s) / max(len(s), 1), 3) for s in self.samples],
            "bytes_sent_per_node": list(self.node_bytes), "backend": "sim", "device": str(self.device),
            "simulated": True, "wall_s": wall_s, "diverged": self.diverged_at is not None,
            "time_model": self.time.formula(self.algorithm), "alpha": self.sizes.alpha,
        }
        if self.algorithm in ("quantimed", "qdsgd"):
            summary["eps"] = self.sizes.eps
        if self.algorithm == "quantimed":
            per_micro = [algo.micro_batch_size / v for node in self.node_speeds for v in node]
            summary["deadline_s"] = algo.deadline_s
            summary["deadline_overshoot_p99_s"] = 0.0  # a virtual node stops at floor(V T_d) samples, never late
            summary["micro_batch_p99_s"] = float(np.percentile(per_micro, 99)) if per_micro else 0.0
            summary["micro_batches_per_iteration"] = [
                round(sum(len(micro_batches(c, algo.micro_batch_size)) for c in s) / max(len(s), 1), 3)
                for s in self.samples]
        if self.algorithm == "async_dsgd":
            summary["iterations_per_node"] = steps
        return summary


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def simulate(config: Config, **options: Any) -> SimResult:
    """Run ``config`` on the virtual clock. ``options`` as for :class:`Simulation`: ``write`` (the run
    directory; False keeps everything in memory), ``node_logs`` (per-node jsonl and TensorBoard),
    ``gradient_mode`` (auto, vmap, loop), ``device``, ``progress``, ``stop_at_loss`` (stop at the first
    evaluation at or below it: sweeps that measure the time to a target loss)."""
    return Simulation(config, **options).run()
