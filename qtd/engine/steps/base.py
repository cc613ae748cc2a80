"""What every step object shares: its per-iteration stats, the gradient source, and the step protocol.

A step object is a node's algorithm-specific piece: it holds what persists between iterations (buffers,
the exchange, counters) and does one iteration in :meth:`Step.step`. Everything every run does alike
(resume, run files, evaluation cadence, checkpoints, evaluator, summary, TensorBoard, progress) is the
driver's (:mod:`qtd.engine.driver`). The maths is in :mod:`qtd.algorithms`, the network in :mod:`qtd.comm`,
the deadline loop in :mod:`qtd.deadline`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from ...deadline import DeadlineTimer, GradientResult, compute_fixed_batch
from ...deadline.auto import AutoDeadline, noise_terms, seen_exchange_s
from ...models import FlatModel

StepFn = Callable[[int], float]


@dataclass(frozen=True)
class StepStats:
    """What one node did in one iteration."""

    samples: int
    loss: float  # mean training loss over the samples computed (nan if none)
    compute_s: float
    busy_s: float  # computing, pacing sleeps excluded
    micro_batches: int
    wait_s: float  # blocked on the network (emulated link time included); async: inside the channel
    iteration_s: float
    speed: float | None  # the emulated speed V_{i,t}, if stragglers are emulated
    log: Mapping[str, Any] = field(default_factory=dict)  # step-specific keys of nodes/node_XXX.jsonl
    scalars: Mapping[str, float] = field(default_factory=dict)  # step-specific TensorBoard node/* scalars


def stats_from(result: GradientResult, speed: float | None, wait_s: float, iteration_s: float,
               **extra: Any) -> StepStats:
    return StepStats(samples=result.samples, loss=result.mean_loss, compute_s=result.compute_s,
                     busy_s=result.busy_s, micro_batches=result.micro_batches, wait_s=wait_s,
                     iteration_s=iteration_s, speed=speed, **extra)


def node_scalars(stats: StepStats, bytes_sent: int, time_s: float) -> dict[str, float]:
    """The TensorBoard tags of one node's iteration (``node_XXX``), for real runs and the library wrapper alike."""
    scalars = {"node/train_loss": stats.loss, "node/samples": stats.samples, "node/compute_s": stats.compute_s,
               "node/wait_s": stats.wait_s, "node/bytes_sent": bytes_sent, "node/time_s": time_s}
    if stats.speed:
        scalars["node/speed"] = stats.speed
    return {**scalars, **stats.scalars}


class GradientSource:
    """Computes this node's gradient into ``flat.grads``: a fixed batch, or micro-batches until a deadline;
    the mean over the samples computed (zero if none).

    With ``auto`` (``algorithm.deadline_s: auto``) the deadline is the controller's current T_d, and one
    group of the samples has its gradient sum kept apart (one more buffer: the gradient before each of its
    micro-batches is subtracted, the one after it added), so each iteration also yields the gradient-noise
    estimate of :func:`qtd.deadline.auto.noise_terms` (:attr:`noise`).
    """

    def __init__(self, flat: FlatModel, step: StepFn, device: torch.device, speed_of: Callable[[int], float | None],
                 batch_size: int, deadline_s: float | None, micro_batch_size: int,
                 auto: AutoDeadline | None = None) -> None:
        self.flat, self.step, self.device, self.speed_of = flat, step, device, speed_of
        self.batch_size = batch_size
        self.auto = auto
        self.timer = DeadlineTimer(deadline_s, micro_batch_size, device) if deadline_s else None
        self.noise: tuple[float, float] | None = None  # the latest iteration's (tr(Sigma), |G|^2), with auto
        self._half = torch.zeros_like(flat.grads) if auto is not None else None
        self._window = torch.zeros_like(flat.grads) if auto is not None else None  # gradients since the agreement
        self._counts = [0, 0]

    def compute(self, iteration: int) -> tuple[GradientResult, float | None]:
        speed = self.speed_of(iteration)
        self.flat.grads.zero_()
        if self.timer is not None:
            if self.auto is not None:
                self.timer.deadline_s = self.auto.deadline_s
                result = self.timer.run(self._split_step(), speed)
                self.noise = self._noise(result.samples)
            else:
                result = self.timer.run(self.step, speed)
        else:
            result = compute_fixed_batch(self.step, self.batch_size, speed, self.device)
        if result.samples:
            self.flat.grads.div_(result.samples)
        else:
            self.flat.grads.zero_()
        return result, speed

    def _split_step(self) -> StepFn:
        """The step function, keeping group A's gradient sum in ``_half``: the first micro-batch runs in two
        halves (A, then B), each later one goes whole to the group with fewer samples so far (A on a tie),
        as :func:`qtd.sim.stack.split_groups` forms them."""
        half, grads, counts = self._half, self.flat.grads, [0, 0]
        half.zero_()
        self._counts = counts

        def into(group: int, k: int) -> float:
            if group == 0:
                half.sub_(grads)
            loss = self.step(k)
            if group == 0:
                half.add_(grads)
            counts[group] += k
            return loss

        def step(k: int) -> float:
            if counts == [0, 0]:
                first = (k + 1) // 2
                return into(0, first) + (into(1, k - first) if k > first else 0.0)
            return into(0 if counts[0] <= counts[1] else 1, k)

        return step

    def observed(self, result: GradientResult, wait_s: float, overlap: bool, rounding: float = 0.0) -> dict[str, Any]:
        """With ``auto``: record one iteration (the exchange time is the wait without overlap; with overlap it
        is seen only when the exchange outlasted the compute phase); the node log's extra keys."""
        if self.auto is None:
            return {}
        exchange = seen_exchange_s(result.compute_s, wait_s, overlap)
        self.auto.record(result.compute_s, exchange, result.samples, self.noise, rounding)
        self._window.add_(self.flat.grads)
        return {"deadline_s": self.timer.deadline_s}

    def window_gradient(self) -> Tensor | None:
        """With ``auto``: the mean of this node's gradients since the last agreement (for the evaluation)."""
        if self.auto is None:
            return None
        return self._window / max(self.auto.window.iterations, 1)

    def agree(self, table: Mapping[str, np.ndarray]) -> None:
        """With ``auto``: the next T_d from the gathered table; a new window."""
        if self.auto is not None:
            self.auto.agree(table)
            self._window.zero_()

    def _noise(self, samples: int) -> tuple[float, float] | None:
        n_a, n_b = self._counts[0], self._counts[1]
        if not (n_a and n_b):
            return None
        grads, half = self.flat.grads, self._half
        sq_total = float(grads.double().square().sum())
        sq_a = float(half.double().square().sum())
        sq_b = float((grads - half).double().square().sum())
        return noise_terms(sq_a, n_a, sq_b, n_b, sq_total)


class Step:
    """The protocol every step object follows, with the defaults most steps keep.

    Required: :meth:`step`, :attr:`bytes_sent`, :meth:`state_dict` / :meth:`load_state_dict` (what a
    checkpoint holds besides the model, sampler and counters). The hooks let a step take part in the
    driver's phases without the driver knowing which algorithm it runs.
    """

    def step(self, iteration: int) -> StepStats:
        raise NotImplementedError

    @property
    def bytes_sent(self) -> int:
        """Algorithm traffic this node sent so far, headers included."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def ready(self) -> None:
        """Collective, before training starts (asynchronous runs: every node's clock starts together)."""

    def start(self, clock: Any) -> None:
        """Training starts now, on ``clock`` (the cadence's training clock)."""

    def restored(self, iteration: int) -> None:
        """Called (collectively) after every node restored the checkpoint of ``iteration``."""

    def finish(self, iterations_done: int) -> None:
        """This node stops updating (asynchronous runs: it tells its neighbours)."""

    def before_final_checkpoint(self, iteration: int) -> None:
        """Collective: the last thing before the final checkpoint (parameter-server mode checks its replicas)."""

    def close(self) -> None:
        """The run ended normally: let go of the network (asynchronous runs drain their channel)."""

    def abort(self) -> None:
        """The run failed: let go of the network without waiting for peers."""

    def regroup(self, world: Any, view: Any, iteration: int) -> None:
        """Collective among the survivors of an elastic run (``comm.on_peer_loss: continue``): go on in
        ``world`` with this node's ``view`` of the survivors' graph, from ``iteration``."""
        raise NotImplementedError(f"{type(self).__name__} cannot go on without a lost node")

    def eval_values(self) -> dict[str, float]:
        """This node's values gathered at every evaluation (same keys on every node)."""
        return {}

    def evaluation_gradient(self) -> torch.Tensor | None:
        """A vector the evaluation's all-reduce averages over the nodes too (``deadline_s: auto``)."""
        return None

    def evaluated(self, table: Mapping[str, np.ndarray]) -> None:
        """Collective (every node, the same ``table``): called once per evaluation, after the gather."""

    def eval_columns(self, table: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Extra keys of a metrics.jsonl row, from the gathered per-node ``table`` (column -> one value per node)."""
        return {}

    def eval_scalars(self, columns: Mapping[str, Any]) -> dict[str, float]:
        """TensorBoard tags (global run) for the extra columns of :meth:`eval_columns`."""
        return {}

    def summary_values(self, table: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Extra keys of summary.json, from the per-node table gathered at the end."""
        return {}


class AutoDeadlineStep(Step):
    """The hooks of a deadline-bound step with ``algorithm.deadline_s: auto``: its window means travel in
    every evaluation's gathered table, from which every node agrees on the next T_d (no extra round);
    metrics.jsonl and TensorBoard show the agreed T_d. Steps set ``self.gradients`` (a GradientSource)."""

    gradients: GradientSource

    def evaluation_gradient(self) -> torch.Tensor | None:
        return self.gradients.window_gradient()

    def eval_values(self) -> dict[str, float]:
        auto = self.gradients.auto
        return auto.values() if auto is not None else {}

    def evaluated(self, table: Mapping[str, np.ndarray]) -> None:
        self.gradients.agree(table)

    def eval_columns(self, table: Mapping[str, np.ndarray]) -> dict[str, Any]:
        auto = self.gradients.auto
        return {"deadline_s": auto.deadline_s} if auto is not None else {}

    def summary_values(self, table: Mapping[str, np.ndarray]) -> dict[str, Any]:
        auto = self.gradients.auto
        return {"deadline_s_final": auto.deadline_s} if auto is not None else {}

    def auto_state(self) -> dict[str, Any]:
        auto = self.gradients.auto
        return auto.state_dict() if auto is not None else {}

    def load_auto_state(self, state: Mapping[str, Any]) -> None:
        if self.gradients.auto is not None:
            self.gradients.auto.load_state_dict(state)
