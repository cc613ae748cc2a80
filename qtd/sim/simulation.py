"""The virtual-time simulator: all n nodes in one process, on the paper's clock (:mod:`.clock`).

Every node has its own model (a row of an (n, p) stack), its own local data and sampler
(``Problem.node_sampler``, as in a real run), its own quantizer stream (the wire message a real node would
send, keyed by run seed, sender and iteration: :mod:`.messages`) and its own speed V_{i,t}
(:class:`qtd.deadline.SpeedModel`, always the configured distribution). The algorithm is its spec in the
registry: the update rule real runs call, applied to the whole stack at once (the mixing step sum_{j in N_i}
w_ij z_j of every node is one matrix product), the gradient mode and the runner. The evaluation points and
the summary are built as a real run builds them (:mod:`qtd.engine.points`, :mod:`qtd.engine.summary`); only
the clock is the simulator's own.

Instead of sleeping, a virtual clock advances by the time model. A deadline-bound node computes
floor(V_{i,t} * T_d) samples; a fixed-batch node B. Asynchronous algorithms run as a queue of events
(:mod:`.events`), one per node step, in order of virtual time.

``run.iterations`` is the number of synchronous iterations; for asynchronous runs it is the number of
rounds of n events (the mean local step count), so the gradient work matches a synchronous run of the same
length. ``run.time_budget_s``, when set, stops the run once the virtual clock reaches it. The simulator
always starts over (``run.resume`` and ``run.checkpoint_every`` apply to real runs): a run takes minutes.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..algorithms import LocalOptimizer, PublicCopies, Runner, consensus_error, mix_stack, spec_for
from ..compress.message_codec import difference_codec
from ..config import Config, ConfigError
from ..errors import DivergedError
from ..costs import ring_allreduce_bytes
from ..deadline import SpeedModel, deadline_samples
from ..engine.points import EvalPoint, evaluate_sum
from ..engine.problem import build_problem
from ..engine.run_files import flat_hparams
from ..engine.summary import build_summary
from ..metrics import Progress
from ..metrics.model_file import average_states
from ..topology import build_topology
from .clock import FLOAT32_BYTES, TimeModel
from .auto import NetworkDeadline, rounding_terms
from .events import EventQueue
from .messages import MessageCodec
from .outputs import SimRecorder
from .stack import LoopGradients, build_gradients, micro_batches


@dataclass
class SimResult:
    models: Tensor  # (n, p): every node's final model
    rows: list[dict[str, Any]]  # the metrics.jsonl rows
    summary: dict[str, Any]  # what summary.json holds
    samples: list[list[int]]  # samples[i][k]: samples node i computed in its k-th iteration (or async step)
    events: list[tuple[float, int]] = field(default_factory=list)  # async: (virtual end time, node) per step


class Simulation:
    """One simulated run: build with a config, then :meth:`run`."""

    def __init__(self, config: Config, *, write: bool = True, node_logs: bool = True,
                 gradient_mode: str = "auto", device: torch.device | None = None,
                 progress: bool | None = None, stop_at_loss: float | None = None) -> None:
        self.spec = spec_for(config.mode, config.algorithm.name)
        if self.spec.runner is Runner.PS:
            raise ConfigError(f"mode={config.mode!r}: qtd sim simulates the decentralized algorithms; "
                              "run parameter-server mode with qtd launch")
        self.config = config
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.topology = build_topology(config.topology)
        self.problem = build_problem(config)
        self.n = config.topology.nodes
        seed = config.run.seed
        self.samplers = [self.problem.node_sampler(i, seed) for i in range(self.n)]
        train = self.problem.splits.train
        if self.spec.runner is Runner.ASYNC:  # one node at a time: the real engine's per-node step
            self.gradients: Any = LoopGradients(self.problem.template, self.samplers, self.device)
        else:
            dataset = train.to(self.device) if self.device.type != "cpu" else train
            self.gradients = build_gradients(self.problem.template, dataset, self.samplers, self.device,
                                             gradient_mode)
        start = self.problem.new_flat_model(self.device).params.detach()
        self.numel = start.numel()
        self.models = start.unsqueeze(0).repeat(self.n, 1).contiguous()
        # per iteration of the topology's period (one round for a static graph): row i of the neighbour
        # mixing is w_ij for j in N_i and 0 elsewhere; the degrees count the messages each node sends
        self.rounds = [self._round(t) for t in range(self.topology.period)]
        self.neighbour_mixing, self.self_weights, self.degrees = self.rounds[0]
        algo, emu = config.algorithm, config.emulation
        self.copies = (PublicCopies(self.models, self.self_weights) if self.spec.runner is Runner.DIFFERENCE_GOSSIP
                       else None)
        self.sizes = self.spec.step_sizes(algo.schedule, algo.alpha, algo.eps, config.run.iterations, algo.gamma)
        self.local = LocalOptimizer(algo.local_sgd(config.run.iterations), self.models)  # one row per node
        self.speeds = SpeedModel.from_config(emu, seed)
        self.time = TimeModel(emu.comm_time_s, emu.link_latency_s, self.n, self.numel, algo.overlap)
        compression = config.compression
        self.bits = compression.bits
        self.codec = MessageCodec(self.numel, self.bits, seed, self.device, compression.block_size)
        if compression.block_size:  # each block's offset and scale: 64 bits per block_size values on the link
            self.bits = compression.bits + 64 / compression.block_size
        self.sparse = None  # CHOCO's TopK or sign differences: one message per node, as a real node encodes it
        if compression.differences != "grid":
            self.sparse = difference_codec(compression.differences, start, compression.bits, compression.k_ratio, seed)
            self.codec.nbytes = self.sparse.message_nbytes
            self.bits = 8 * self.sparse.message_nbytes / self.numel  # what a value costs on the link (time model)
        self.evaluator = problem_evaluator(self.problem, self.device, getattr(self.gradients, "flats", ()))
        buffer_numel = sum(b.numel() for b in self.problem.template.buffers() if b.is_floating_point())
        auto = self.spec.deadline_bound and algo.auto_deadline
        # deadline_s=auto: the models' all-reduce carries the gradients too (qtd.engine.evaluate.Evaluator)
        carried = 2 if auto else 1
        self.bytes_per_evaluation = self.n * (ring_allreduce_bytes(FLOAT32_BYTES * carried * self.numel, self.n) + (
            ring_allreduce_bytes(FLOAT32_BYTES * buffer_numel, self.n) if buffer_numel else 0))  # as real runs
        self.recorder = SimRecorder(config, write=write, node_logs=node_logs)
        self.show_progress = config.run.progress if progress is None else progress
        self.time_s, self.bytes_sent, self.evaluations = 0.0, 0, 0
        self.node_bytes = [0] * self.n
        self.samples: list[list[int]] = [[] for _ in range(self.n)]
        self.node_speeds: list[list[float]] = [[] for _ in range(self.n)]
        self.rows: list[dict[str, Any]] = []
        self.events: list[tuple[float, int]] = []
        self.diverged_at: int | None = None
        self.auto = NetworkDeadline(algo.deadline_start_s, algo.overlap, self.n) if auto else None
        self.stop_at_loss = stop_at_loss  # sweeps: stop at the first evaluation at or below this loss
        self.reached_target = False

    def _round(self, t: int) -> tuple[Tensor, Tensor, list[int]]:
        mixing = torch.tensor(self.topology.mixing_at(t), dtype=torch.float32, device=self.device)
        self_weights = mixing.diagonal().clone()
        degrees = [len(self.topology.view(i, t).neighbours) for i in range(self.n)]
        return mixing - torch.diag(self_weights), self_weights, degrees

    # -- synchronous runners (gossip, collective) ---------------------------------------------------------

    @property
    def deadline_s(self) -> float:
        """T_d of the current iteration: the fixed one, or the agreed one with deadline_s=auto."""
        return self.auto.deadline_s if self.auto else self.config.algorithm.first_deadline_s

    def _sample_counts(self, speeds: list[float]) -> list[int]:
        algo = self.config.algorithm
        if self.spec.deadline_bound:
            return [deadline_samples(v, self.deadline_s) for v in speeds]
        return [algo.batch_size] * self.n

    def _sync_iteration(self, t: int, decoded: Tensor) -> None:
        algo, n, spec = self.config.algorithm, self.n, self.spec
        speeds = self.speeds.speeds_at(n, t).tolist()
        counts = self._sample_counts(speeds)
        deadline_s, noise = self.deadline_s, None
        if self.auto:
            grads, losses, noise = self.gradients.halves(self.models, counts, algo.micro_batch_size)
        else:
            grads, losses = self.gradients(self.models, counts, algo.micro_batch_size if spec.deadline_bound else None)
        if spec.deadline_bound:
            compute = [deadline_s] * n
        else:
            compute = [algo.batch_size / v for v in speeds]
        step_s = self.time.iteration_s(spec, deadline_s, algo.batch_size, speeds, self.bits)
        x = self.models
        with torch.no_grad():
            sizes = self.local.sizes(self.sizes, t)
            if spec.runner is Runner.COLLECTIVE:
                new = spec.update(x, None, None, self.local.direction(grads.mean(dim=0, keepdim=True), x), sizes)
                sent_per_node = [ring_allreduce_bytes(FLOAT32_BYTES * self.numel, n)] * n
            elif spec.runner is Runner.DIFFERENCE_GOSSIP:
                if self.auto:  # the consensus step leaves the average unchanged: no rounding term
                    self.auto.record(counts, noise, grads, step_s, [0.0] * n)
                new = self._difference_gossip(x, self.local.direction(grads, x), t, decoded, sizes)
                sent_per_node = [d * self.codec.nbytes for d in self.degrees]
            else:
                self.codec.all(x, t, out=decoded)
                neighbour_mixing, self_weights, degrees = self.rounds[t % len(self.rounds)]
                if self.auto:
                    rounding = rounding_terms(x, decoded, self_weights, sizes.alpha)
                    self.auto.record(counts, noise, grads, step_s, rounding)
                new = spec.update(x, mix_stack(neighbour_mixing, decoded), self_weights,
                                  self.local.direction(grads, x), sizes)
                sent_per_node = [d * self.codec.nbytes for d in degrees]
            x.copy_(new)
        self.time_s += step_s
        self.bytes_sent += sum(sent_per_node)
        for i in range(n):
            self.node_bytes[i] += sent_per_node[i]
            self.samples[i].append(counts[i])
            self.node_speeds[i].append(speeds[i])
            self.recorder.node(i, t + 1, {
                "iteration": t + 1, "time_s": self.time_s, "samples": counts[i],
                "train_loss": float(losses[i]) / counts[i] if counts[i] else float("nan"),
                "compute_s": compute[i], "wait_s": step_s - compute[i], "bytes_sent": self.node_bytes[i],
                "speed": speeds[i], **({"deadline_s": deadline_s} if self.auto else {})})

    def _difference_gossip(self, x: Tensor, direction: Tensor, t: int, decoded: Tensor, sizes) -> Tensor:
        """Every node's difference-gossip step at once, in the order of the real step
        (:class:`qtd.engine.steps.choco.DifferenceGossipStep`): with overlap the difference of x is sent while
        the gradient is computed; without it, after the gradient half of the update."""
        spec, copies, w_self = self.spec, self.copies, self.self_weights
        if not self.config.algorithm.overlap:
            x = spec.update(x, 0.0, w_self, direction, sizes)
            direction = 0.0
        if self.sparse is None:
            self.codec.all(copies.difference(x), t, out=decoded)
        else:
            message = torch.empty(self.sparse.message_nbytes, dtype=torch.uint8, device=self.device)
            for i, difference in enumerate(copies.difference(x)):
                self.sparse.encode(difference, i, t, out=message)
                self.sparse.decode(message, i, t, out=decoded[i])
        copies.receive(decoded, mix_stack(self.neighbour_mixing, decoded))
        return spec.update(x, copies.direction(), w_self, direction, sizes)

    def _run_sync(self, progress: Progress) -> int:
        run = self.config.run
        decoded = torch.empty_like(self.models)
        iteration = 0
        while iteration < run.iterations:
            try:
                self._sync_iteration(iteration, decoded)
            except DivergedError:  # a model went non-finite within the iteration (CHOCO without overlap)
                self.models.fill_(math.nan)
            iteration += 1
            finite = math.isfinite(float(self.models.sum()))  # one reduction: NaN or inf anywhere shows
            over = bool(run.time_budget_s) and self.time_s >= run.time_budget_s
            if iteration % run.eval_every == 0 or iteration == run.iterations or over or not finite:
                self._evaluate(iteration)
            progress.update(1, **self._postfix())
            if not finite:
                self.diverged_at = iteration
                break
            if over or self.reached_target:
                break
        return iteration

    # -- asynchronous runner -----------------------------------------------------------------------------

    def _async_pace(self, node: int, step: int) -> tuple[float, float]:
        algo = self.config.algorithm
        speed = self.speeds.speed(node, step)
        return self.time.iteration_s(self.spec, self.deadline_s, algo.batch_size, [speed], self.bits), speed

    def _run_async(self, progress: Progress) -> int:
        run, n, spec = self.config.run, self.n, self.spec
        batch = self.config.algorithm.batch_size
        held = self.models.clone()  # held[j]: node j's newest model as its neighbours decode it
        queue = EventQueue(n, self._async_pace)
        total, events, rounds = n * run.iterations, 0, 0
        while events < total:
            when, j, k, speed = queue.pop()
            if run.time_budget_s and when > run.time_budget_s:
                break
            grad, loss_sum = self.gradients.node(j, self.models[j], [batch])
            with torch.no_grad():
                mixed = mix_stack(self.neighbour_mixing[j], held)
                direction = self.local.direction(grad, self.models[j], node=j)
                self.models[j].copy_(spec.update(self.models[j], mixed, self.self_weights[j], direction,
                                                 self.local.sizes(self.sizes, k)))
                finite = math.isfinite(float(self.models[j].sum()))
                if finite:  # the message of version k + 1, keyed as the real engine keys it
                    self.codec.node(self.models[j], j, k + 1, out=held[j])
            events += 1
            self.time_s = when
            self.events.append((when, j))
            sent = self.degrees[j] * self.codec.nbytes
            self.node_bytes[j] += sent
            self.bytes_sent += sent
            self.samples[j].append(batch)
            self.node_speeds[j].append(speed)
            self.recorder.node(j, k + 1, {
                "iteration": k + 1, "time_s": when, "samples": batch, "train_loss": loss_sum / batch,
                "compute_s": batch / speed, "wait_s": 0.0, "bytes_sent": self.node_bytes[j], "speed": speed})
            queue.push_next(j, when)
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
        if not self.rows or self.rows[-1]["iteration"] != events // n or self.rows[-1]["time_s"] != self.time_s:
            self._evaluate(events // n)
        return events // n

    # -- common ----------------------------------------------------------------------------------------

    def _evaluate(self, iteration: int) -> None:
        """Evaluation costs no virtual time; ``eval_bytes`` counts what a real run's evaluation all-reduce sends."""
        self.evaluations += 1
        loss, accuracy, consensus = self.evaluator(self.models)
        if self.auto:
            self.auto.agree()
        point = EvalPoint(iteration=iteration, time_s=self.time_s, eval_loss=loss, eval_accuracy=accuracy,
                          consensus_error=consensus, bytes_sent=self.bytes_sent,
                          eval_bytes=self.evaluations * self.bytes_per_evaluation,
                          columns={"deadline_s": self.deadline_s} if self.auto else {})
        if self.stop_at_loss is not None and point.eval_loss <= self.stop_at_loss:
            self.reached_target = True
        self.rows.append(point.row())
        self.points.append(point)
        self.recorder.evaluation(point)

    def _postfix(self) -> dict[str, str]:
        return {"t": f"{self.time_s:.0f}s", **({"loss": f"{self.rows[-1]['eval_loss']:.3f}"} if self.rows else {})}

    def run(self) -> SimResult:
        wall = time.perf_counter()
        self.points: list[EvalPoint] = []
        progress = Progress(self.config.run.iterations, enabled=self.show_progress,
                            desc=f"sim {self.spec.name} x{self.n}")
        try:
            iterations = self._run_async(progress) if self.spec.runner is Runner.ASYNC else self._run_sync(progress)
            summary = self._summary(iterations, time.perf_counter() - wall)
            model = average_model_state(self.problem, self.models, self.device, getattr(self.gradients, "flats", ()))
            self.recorder.finish(summary, self.models, flat_hparams(self.config), model)
        finally:
            progress.close()
            self.recorder.close()
        if self.diverged_at is not None:
            warnings.warn(f"the models diverged (non-finite values) at iteration {self.diverged_at}: lower "
                          f"{self.spec.step_keys}", stacklevel=2)
        return SimResult(models=self.models, rows=self.rows, summary=summary, samples=self.samples, events=self.events)

    def _summary(self, iterations: int, wall_s: float) -> dict[str, Any]:
        algo, spec = self.config.algorithm, self.spec
        last = self.points[-1]
        point = EvalPoint(iteration=iterations, time_s=last.time_s, eval_loss=last.eval_loss,
                          eval_accuracy=last.eval_accuracy, consensus_error=last.consensus_error,
                          bytes_sent=last.bytes_sent, eval_bytes=last.eval_bytes)
        extra: dict[str, Any] = {"simulated": True, "diverged": self.diverged_at is not None,
                                 "time_model": self.time.formula(spec), "alpha": self.sizes.alpha}
        if spec.uses_eps:
            extra["eps"] = self.sizes.eps
        if spec.uses_gamma:
            extra["gamma"] = self.sizes.gamma
        if self.auto:
            extra["deadline_s_final"] = self.deadline_s
        if spec.deadline_bound:
            per_micro = [algo.micro_batch_size / v for node in self.node_speeds for v in node]
            extra["deadline_overshoot_p99_s"] = 0.0  # a virtual node stops at floor(V T_d) samples, never late
            extra["micro_batch_p99_s"] = float(np.percentile(per_micro, 99)) if per_micro else 0.0
            extra["micro_batches_per_iteration"] = [
                round(sum(len(micro_batches(c, algo.micro_batch_size)) for c in s) / max(len(s), 1), 3)
                for s in self.samples]
        if spec.runner is Runner.ASYNC:
            extra["iterations_per_node"] = [len(s) for s in self.samples]
        return build_summary(algorithm=spec.name, spec=spec, config=self.config, nodes=self.n, point=point,
                             samples_per_iteration=[sum(s) / max(len(s), 1) for s in self.samples],
                             bytes_sent_per_node=self.node_bytes, backend="sim", device=str(self.device),
                             wall_s=wall_s, extra=extra)


def problem_evaluator(problem, device: torch.device, flats=()):
    """In one process: the loss and accuracy of the nodes' average model on the whole evaluation set, and
    the consensus error; NaN for all three when a model holds non-finite values. When the nodes run real
    modules (``flats``, :class:`LoopGradients`), the average model has their mean float buffers (BatchNorm's
    running statistics), as in real runs."""
    average = problem.new_flat_model(device)
    node_buffers = [[b for b in f.module.buffers() if b.is_floating_point()] for f in flats]
    buffers = [b for b in average.module.buffers() if b.is_floating_point()]

    def evaluate(models: Tensor) -> tuple[float, float, float]:
        with torch.no_grad():
            average.params.copy_(models.mean(dim=0))
            for k, target in enumerate(buffers if node_buffers else ()):
                target.copy_(torch.stack([node[k] for node in node_buffers]).mean(dim=0))
        if not bool(torch.isfinite(average.params).all()):
            return float("nan"), float("nan"), float("nan")
        loss_sum, correct, count = evaluate_sum(average.module, problem.eval_set, problem.eval_indices, device)
        return loss_sum / max(count, 1), correct / max(count, 1), consensus_error(models)

    return evaluate


def average_model_state(problem, models: Tensor, device: torch.device, flats=()) -> dict[str, Tensor]:
    """What model.pt holds: the template's state_dict with the nodes' average parameters (a float64 mean, as
    real runs take it) and, when the nodes ran real modules (``LoopGradients``), their average buffers."""
    average = problem.new_flat_model(device)
    with torch.no_grad():
        average.params.copy_(models.detach().to(torch.float64).mean(dim=0).to(torch.float32))
    state = {key: value.detach().cpu().clone() for key, value in average.module.state_dict().items()}
    buffers = [name for name, _ in average.module.named_buffers()]
    if flats and buffers:
        state.update({name: value for name, value in average_states([
            {name: dict(flat.module.named_buffers())[name] for name in buffers} for flat in flats]).items()})
    return state


def simulate(config: Config, **options: Any) -> SimResult:
    """Run ``config`` on the virtual clock. ``options`` as for :class:`Simulation`: ``write`` (the run directory;
    False keeps everything in memory), ``node_logs`` (per-node jsonl and TensorBoard), ``gradient_mode`` (auto,
    vmap, loop), ``device``, ``progress``, ``stop_at_loss`` (stop at the first evaluation at or below it)."""
    return Simulation(config, **options).run()
