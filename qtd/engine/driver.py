"""The one node loop of real runs: every algorithm's node, started by torchrun, goes through it.

The driver owns what every run does alike: the run directory (README: "What a run writes"), resume, the
evaluation cadence (:mod:`.cadence`: every N iterations, or at training times agreed in advance),
checkpoints, the evaluator, the summary, TensorBoard and the progress bar. What an algorithm does in one
iteration is its step object's (:mod:`.steps`), chosen by the runner of its spec in the registry.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..algorithms import AlgorithmSpec, Runner, display_name, spec_for
from ..comm import JoinRequests, World, broadcast
from ..config import Config, ConfigError
from ..errors import CheckpointError, DivergedError, PeerError
from ..topology import build_topology
from ..metrics import (complete_iterations, load_node_checkpoint, node_file, prune_node_checkpoints,
                       save_node_checkpoint, write_json_atomic)
from .evaluate import Evaluator, gather_table
from .model_file import MODEL_FILE, network_average_state, write_model_file
from .elastic import ElasticNode
from .membership import MembershipLog
from .points import EvalPoint, eval_scalars, point_from_table
from .parts import NodeParts, build_parts
from .resume import existing_summary, resume_verdict, run_settings
from .run_files import RunFiles, clear_run_files, flat_hparams
from .steps import RUNNERS, Step, StepStats, node_scalars
from .summary import build_summary


MAX_CANDIDATES = 4  # newest complete checkpoints looked at on resume (each node keeps its two newest)


@dataclass
class NodeCounters:
    """Running totals of one node, checkpointed with it."""

    time_s: float = 0.0  # training time (see the cadence's clock); evaluation and checkpoint pauses excluded
    samples: int = 0
    iterations: int = 0
    eval_bytes: int = 0
    overshoot_s: list[float] = field(default_factory=list)  # compute phase beyond the deadline, per iteration
    micro_batch_s: list[float] = field(default_factory=list)
    finished: bool = False  # this node stopped updating (asynchronous runs stop one by one)
    finish_s: float = 0.0
    last_update_s: float = 0.0  # training time of this node's latest model update

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
        self.last_update_s = self.time_s


def run_node(config: Config, world: World, joined: Any = None) -> dict[str, Any] | None:
    """Train this process's node (or parameter-server worker); returns the run summary on rank 0. ``joined``:
    this node joins a running elastic run (the agreement that let it in, :func:`qtd.comm.join_world`)."""
    if joined is None and config.topology.nodes != world.size:
        what = " (the worker count in mode=ps)" if config.mode == "ps" else ""
        raise ConfigError(f"topology.nodes={config.topology.nodes}{what} but {world.size} processes were "
                          f"started: set topology.nodes={world.size} or start {config.topology.nodes} processes "
                          f"(torchrun --nproc_per_node {config.topology.nodes})")
    return NodeDriver(config, world, spec_for(config.mode, config.algorithm.name), joined).run()


class NodeDriver(ElasticNode):
    """One node's run: build with the config, the world and the spec, then :meth:`run`."""

    def __init__(self, config: Config, world: World, spec: AlgorithmSpec, joined: Any = None) -> None:
        build_step, cadence = RUNNERS[spec.runner]
        self.config, self.world, self.spec = config, world, spec
        self.name = display_name(spec, config.ps.compressor, config.ps.error_feedback)
        self.parts: NodeParts = build_parts(config, world, spec)
        self.flat = self.parts.flat
        self.cadence = cadence(config.run)
        self.out = Path(config.run.out_dir)
        self.settings = json.dumps(run_settings(config), sort_keys=True)
        self.completion: str | None = None  # the run is complete already: this line says so
        self._resume_state: dict[str, Any] | None = None
        self._joined = joined  # this node joins a running elastic run (qtd.engine.elastic)
        # collective: every node agrees where the run starts; a joining node starts where the members are
        self.start = joined.iteration if joined is not None else self._prepare_out_dir()
        self.step: Step = build_step(self.parts)
        problem = self.parts.problem
        self.evaluator = Evaluator(world, problem.eval_set, problem.eval_indices, problem.new_flat_model(world.device),
                                   replicated=spec.runner is Runner.PS)
        self.counters = NodeCounters()
        self._last_loss = float("nan")
        self._regrouped = False  # the membership changed: evaluate at once
        self.membership = MembershipLog(range(config.topology.nodes), build_topology(config.topology).spectral_gap
                                        if world.elastic else 1.0)
        self.joins = JoinRequests(world.heartbeat.store, config.topology.nodes) if world.elastic else None
        self._joiners: tuple[int, ...] = ()  # nodes the latest evaluation saw asking to join
        if self._resume_state is not None and self.completion is None:
            self._restore(self.start, self._resume_state)
        self._resume_state = None
        self.iteration = self.start

    # -- the run directory and resume ---------------------------------------------------------------------

    def _prepare_out_dir(self) -> int:
        """Collective: where this run starts (0: from scratch). Rank 0 lists the checkpoints every node
        completed (``run.resume: auto``), or clears the previous run's files when this run starts over;
        every node then checks its own files, newest first, and all agree on the newest checkpoint that is
        intact on every node. Its settings must be this config's; a final one means the run is complete."""
        run, world = self.config.run, self.world
        candidates = torch.full((MAX_CANDIDATES,), -1, dtype=torch.int64, device=world.device)
        if world.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            done = complete_iterations(self.out, world.size) if run.resume == "auto" else []
            if done:
                newest = done[::-1][:MAX_CANDIDATES]
                candidates[:len(newest)] = torch.tensor(newest, dtype=torch.int64)
            else:
                clear_run_files(self.out)  # starting over: an older run's files would outrank or splice ours
        what = "agreeing on the checkpoint to resume from"
        broadcast(candidates, world, 0, what)
        found = [c for c in candidates.tolist() if c >= 0]
        if not found:
            return 0
        states: dict[int, dict[str, Any]] = {}
        for iteration in found:
            try:
                states[iteration] = load_node_checkpoint(node_file(self.out, iteration, world.rank), world.rank)
            except CheckpointError:
                pass
        table = gather_table({f"intact_{c}": float(c in states) for c in found}, world, what)
        damaged = {c: [r for r, ok in enumerate(table[f"intact_{c}"]) if not ok] for c in found}
        chosen = next((c for c in found if not damaged[c]), None)
        report = "; ".join(f"iteration {c} damaged on node(s) {', '.join(map(str, damaged[c]))}"
                           for c in found if damaged[c] and (chosen is None or c > chosen))
        if chosen is None:
            raise CheckpointError(f"no checkpoint in {str(self.out / 'checkpoints')!r} is intact on every node "
                                  f"({report}): set run.resume=never to start over")
        self.completion = resume_verdict(self.config, states[chosen], chosen)  # ConfigError if settings differ
        if world.rank == 0 and self.completion is None:
            damaged_note = f"{report} (unreadable, or its checksum does not match); " if report else ""
            print(f"qtd: {damaged_note}resuming from the checkpoint at iteration {chosen} (run.resume=auto)",
                  file=sys.stderr, flush=True)
        self._resume_state = states[chosen]
        return chosen

    def _node_state(self, final: bool = False) -> dict[str, Any]:
        self.counters.time_s = self.clock.now()
        state = {"params": self.flat.params.detach().cpu().clone(), "sampler": self.parts.sampler.state_dict(),
                 "torch_rng": torch.get_rng_state(), "algorithm": self.step.state_dict(),
                 "counters": self.counters.state_dict(), "settings": self.settings, "final": final}
        buffers = {name: b.detach().cpu().clone() for name, b in self.flat.module.named_buffers()}
        if buffers:  # BatchNorm statistics: for model.pt, qtd export and resume
            state["buffers"] = buffers
        return state

    def _restore(self, iteration: int, state: dict[str, Any]) -> None:
        """Load this node's checkpoint of ``iteration``; CheckpointError when another run setup wrote it."""
        path = node_file(self.out, iteration, self.world.rank)
        params, flat = state.get("params"), self.flat
        if not isinstance(params, torch.Tensor) or params.shape != flat.params.shape:
            size = f"{params.numel()} parameters" if isinstance(params, torch.Tensor) else "no model"
            raise CheckpointError(f"checkpoint {str(path)!r} holds {size} but this config's model has "
                                  f"{flat.params.numel()}: it comes from a run with another model; use a new "
                                  "run.out_dir or set run.resume=never")
        try:
            with torch.no_grad():
                flat.params.copy_(params.to(self.world.device))
            self.parts.sampler.load_state_dict(state["sampler"])
            torch.set_rng_state(state["torch_rng"])
            self.step.load_state_dict(state["algorithm"])
            self.counters.load_state_dict(state["counters"])
            buffers = dict(self.flat.module.named_buffers())
            for name, saved in state.get("buffers", {}).items():
                buffers[name].copy_(saved.to(buffers[name].device))
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise CheckpointError(f"checkpoint {str(path)!r} does not fit this run ({type(exc).__name__}: {exc}); "
                                  "it was written with another config or qtd version: use a new run.out_dir or "
                                  "set run.resume=never") from None
        self.step.restored(iteration)

    def _checkpoint(self, number: int, final: bool = False) -> None:
        save_node_checkpoint(self.out, number, self.world.node, self._node_state(final))
        prune_node_checkpoints(self.out, self.world.node, keep=self.cadence.keep_checkpoints)

    # -- the loop -------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any] | None:
        if self.completion is not None:  # nothing to train, nothing to rewrite
            if self.world.rank == 0:
                print(self.completion, file=sys.stderr, flush=True)
                return existing_summary(self.out)
            return None
        wall_start = time.monotonic()
        files = RunFiles(self.config, self.world.node, self.world.size, self.name, self.start,
                         lead=self.world.rank == 0)
        self.files = files
        try:
            self.step.ready()
            if self._joined is not None:
                self.counters.time_s = self._joined.time_s
            self.clock = self.cadence.new_clock(self.counters.time_s)
            if self._joined is not None:
                self._welcomed(self._joined)
            self.step.start(self.clock)
            point: EvalPoint | None = self._loop()
            self.step.close()
            while True:
                try:
                    if point is None:  # not evaluated at the end yet, or a node was lost there
                        point = self._evaluate(self.iteration)
                    return self._finish(point, time.monotonic() - wall_start)
                except PeerError as error:
                    self._regroup(self.iteration, error, time.monotonic())  # raises unless elastic
                    point = None
        except BaseException:
            self.step.abort()
            raise
        finally:
            files.close()

    def _loop(self) -> EvalPoint | None:
        cadence, counters, progress = self.cadence, self.counters, self.files.progress
        iteration, stepped, unevaluated, point = self.start, False, False, None
        while True:
            now = self.clock.now()
            if not counters.finished and cadence.finish_due(counters.iterations, now):
                self.step.finish(counters.iterations)
                counters.finished, counters.finish_s = True, now
            if cadence.evaluation_due(iteration, now, unevaluated) or self._regrouped:
                started = time.monotonic()
                try:
                    point, unevaluated = self._evaluate(iteration), False
                except PeerError as error:
                    self.clock.resume()
                    iteration = self._regroup(iteration, error, started)
                    continue
                if cadence.stop_after(point):
                    break
                if self._joiners and not cadence.done(iteration):
                    started = time.monotonic()
                    try:
                        self._admit(iteration, point.time_s)
                    except PeerError as error:
                        iteration = self._regroup(iteration, error, started)
                        continue
            if cadence.checkpoint_due(iteration, stepped):
                self._checkpoint(iteration)
            if stepped:
                progress.update(1, elapsed_s=self.clock.now(), loss=f"{self._last_loss:.3f}",
                                **({"eval": f"{point.eval_loss:.3f}"} if point is not None else {}))
            if cadence.done(iteration):
                break
            stepped = False
            if counters.finished:
                time.sleep(max(cadence.idle_s(self.clock.now(), True), 0.0))
                continue
            started = time.monotonic()
            try:
                stats = self.step.step(iteration)
            except PeerError as error:  # elastic runs go on without the lost node; others stop here
                iteration = self._regroup(iteration, error, started)
                stepped, unevaluated = False, True
                continue
            except DivergedError as error:  # its message could not be encoded
                raise self._diverged(iteration + 1, str(error)) from None
            if not np.isfinite(float(self.flat.params.sum())):  # one reduction: NaN or inf anywhere shows
                raise self._diverged(iteration + 1, "")
            iteration += 1
            stepped = unevaluated = True
            self._record(iteration, stats)
        self.iteration = iteration
        return None if unevaluated else point  # None: evaluate once more (resumed at the very end, say)

    def _diverged(self, iteration: int, cause: str) -> DivergedError:
        """The message of a node whose model went NaN or inf; what the run wrote until then stays in place."""
        why = f" ({cause})" if cause else ""
        return DivergedError(f"the model diverged (non-finite values) in iteration {iteration}{why}: lower "
                             f"{self.spec.step_keys}; the metrics and checkpoints written until then are in "
                             f"{self.out}")

    def _record(self, iteration: int, stats: StepStats) -> None:
        counters, files = self.counters, self.files
        self.clock.add(stats.iteration_s)
        now = self.clock.now()
        counters.samples += stats.samples
        counters.iterations += 1
        counters.last_update_s = now
        if self.spec.deadline_bound:
            deadline_s = stats.log.get("deadline_s", self.config.algorithm.first_deadline_s)
            counters.overshoot_s.append(stats.compute_s - deadline_s)
            if stats.micro_batches:
                counters.micro_batch_s.append(stats.busy_s / stats.micro_batches)
        self._last_loss = stats.loss
        bytes_sent = self.step.bytes_sent
        files.node_log.write({"iteration": iteration, "time_s": now, "samples": stats.samples,
                              "train_loss": stats.loss, "compute_s": stats.compute_s, "wait_s": stats.wait_s,
                              "bytes_sent": bytes_sent, "speed": stats.speed, **stats.log})
        files.node_tb.scalars(node_scalars(stats, bytes_sent, now), iteration)

    def _evaluate(self, iteration: int) -> EvalPoint:
        """Collective: every node evaluates at the same point (the cadence guarantees it)."""
        counters, budget = self.counters, self.config.run.time_budget_s
        self.clock.pause()
        what = self.cadence.describe(iteration)
        mine, sent = self.evaluator(self.flat, what, gradient=self.step.evaluation_gradient())
        counters.eval_bytes += sent
        now = self.clock.now()
        values = {**mine, "time_s": now, "last_update_s": counters.last_update_s, "iterations": counters.iterations,
                  "finished": float(counters.finished), "bytes_sent": self.step.bytes_sent,
                  "eval_bytes": counters.eval_bytes, "samples": counters.samples,
                  "over_budget": float(bool(budget) and now >= budget), **self.step.eval_values()}
        if self.joins is not None:  # elastic runs: who asks to join, agreed with the evaluation
            values["join_requests"] = float(self.joins.mask(self.world.members))
        table = gather_table(values, self.world, what)
        position, time_s, columns = self.cadence.position(iteration, table)
        self.step.evaluated(table)
        point = point_from_table(table, position, time_s, {**columns, **self.step.eval_columns(table)})
        self.cadence.evaluated()
        self._regrouped = False
        scalars: dict[str, float] = {}
        if self.world.elastic:
            log = self.membership
            log.seen(table, self.world.members)
            asking = np.bitwise_or.reduce(table["join_requests"].astype(np.int64))
            self._joiners = tuple(k for k in range(self.config.topology.nodes) if asking >> k & 1)
            point = replace(point, columns={**point.columns, **log.columns()},
                            bytes_sent=point.bytes_sent + log.lost_bytes, eval_bytes=point.eval_bytes + log.lost_eval_bytes)
            scalars = log.scalars()
        if self.files.metrics is not None:
            self.files.metrics.write(point.row())
            self.files.global_tb.scalars({**eval_scalars(point), **self.step.eval_scalars(point.columns), **scalars},
                                         point.iteration)
        self.clock.resume()
        return point

    def _finish(self, point: EvalPoint, wall_s: float) -> dict[str, Any] | None:
        counters, world = self.counters, self.world
        self.step.before_final_checkpoint(self.iteration)
        self._checkpoint(self.cadence.final_checkpoint(self.iteration), final=True)
        model = network_average_state(self.flat.module, world, replicated=self.spec.runner is Runner.PS)
        if world.rank == 0:
            write_model_file(model, self.out / MODEL_FILE)
        values = {"samples_per_iteration": counters.samples / max(counters.iterations, 1),
                  "bytes_sent": self.step.bytes_sent, "iterations": counters.iterations,
                  "finish_s": counters.finish_s,
                  "overshoot_p99": _p99(counters.overshoot_s), "micro_batch_p99": _p99(counters.micro_batch_s),
                  "join_bytes": self.membership.welcome_bytes, **self.step.eval_values()}
        table = gather_table(values, world, "collecting the run summary")
        extra: dict[str, Any] = {}
        if self.spec.deadline_bound:
            extra["deadline_overshoot_p99_s"] = float(table["overshoot_p99"].max())
            extra["micro_batch_p99_s"] = float(table["micro_batch_p99"].max())
        extra.update(self.cadence.summary_values())
        extra.update(self.step.summary_values(table))
        if world.elastic:
            extra.update(self.membership.summary(table["join_bytes"].sum()))
        summary = build_summary(algorithm=self.name, spec=self.spec, config=self.config, nodes=world.size,
                                point=point, samples_per_iteration=table["samples_per_iteration"],
                                bytes_sent_per_node=table["bytes_sent"], backend=world.backend,
                                device=str(world.device), wall_s=wall_s, extra=extra)
        if world.rank != 0:
            return None
        write_json_atomic(self.out / "summary.json", summary)
        self.files.global_tb.hparams(flat_hparams(self.config), {"hparam/eval_loss": point.eval_loss,
                                                                 "hparam/eval_accuracy": point.eval_accuracy,
                                                                 "hparam/time_s": point.time_s})
        return summary


def _p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) if values else 0.0
