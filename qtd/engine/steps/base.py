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

from ...deadline import DeadlineTimer, GradientResult, compute_fixed_batch
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
    the mean over the samples computed (zero if none)."""

    def __init__(self, flat: FlatModel, step: StepFn, device: torch.device, speed_of: Callable[[int], float | None],
                 batch_size: int, deadline_s: float | None, micro_batch_size: int) -> None:
        self.flat, self.step, self.device, self.speed_of = flat, step, device, speed_of
        self.batch_size = batch_size
        self.timer = DeadlineTimer(deadline_s, micro_batch_size, device) if deadline_s else None

    def compute(self, iteration: int) -> tuple[GradientResult, float | None]:
        speed = self.speed_of(iteration)
        self.flat.grads.zero_()
        if self.timer is not None:
            result = self.timer.run(self.step, speed)
        else:
            result = compute_fixed_batch(self.step, self.batch_size, speed, self.device)
        if result.samples:
            self.flat.grads.div_(result.samples)
        else:
            self.flat.grads.zero_()
        return result, speed


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

    def eval_values(self) -> dict[str, float]:
        """This node's values gathered at every evaluation (same keys on every node)."""
        return {}

    def eval_columns(self, table: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Extra keys of a metrics.jsonl row, from the gathered per-node ``table`` (column -> one value per node)."""
        return {}

    def eval_scalars(self, columns: Mapping[str, Any]) -> dict[str, float]:
        """TensorBoard tags (global run) for the extra columns of :meth:`eval_columns`."""
        return {}

    def summary_values(self, table: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Extra keys of summary.json, from the per-node table gathered at the end."""
        return {}
