"""When a node evaluates, checkpoints and stops: by iterations (synchronous runs and parameter-server
mode) or at training times agreed in advance (asynchronous runs). The driver asks its cadence; the
cadence knows nothing of algorithms.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..config import RunConfig
from .clock import SteppedClock, TrainingClock


class IterationCadence:
    """An evaluation every ``run.eval_every`` iterations and after the last, a checkpoint every
    ``run.checkpoint_every`` (before the last; the final one is always written); the run stops after
    ``run.iterations``, or at the first evaluation at which some node's training time passed
    ``run.time_budget_s``. Every node counts the same iterations, so all decide alike."""

    keep_checkpoints = 2

    def __init__(self, run: RunConfig) -> None:
        self.run = run
        self.progress_total = run.iterations

    def new_clock(self, elapsed_s: float = 0.0) -> SteppedClock:
        return SteppedClock(elapsed_s)

    def finish_due(self, iteration: int, now_s: float) -> bool:
        return False  # every node stops with the others, after the same iteration

    def evaluation_due(self, iteration: int, now_s: float, stepped: bool) -> bool:
        return stepped and (iteration % self.run.eval_every == 0 or iteration >= self.run.iterations)

    def stop_after(self, point: Any) -> bool:
        return point.over_budget

    def checkpoint_due(self, iteration: int, stepped: bool) -> bool:
        every = self.run.checkpoint_every
        return stepped and bool(every) and iteration % every == 0 and iteration < self.run.iterations

    def done(self, iteration: int) -> bool:
        return iteration >= self.run.iterations

    def idle_s(self, now_s: float, finished: bool) -> float:
        return 0.0

    def position(self, iteration: int, table: Mapping[str, np.ndarray]) -> tuple[int, float, dict[str, Any]]:
        """(iteration, time_s, extra columns) of an evaluation: training time is the nodes' mean."""
        return iteration, float(table["time_s"].mean()), {}

    def describe(self, iteration: int) -> str:
        return f"evaluation at iteration {iteration}"

    def evaluated(self) -> None:
        pass

    def final_checkpoint(self, iteration: int) -> int:
        return iteration

    def summary_values(self) -> dict[str, Any]:
        return {}


def eval_interval_s(run: RunConfig) -> float:
    """Seconds of training between asynchronous evaluations (run.eval_every_s, or its documented default)."""
    if run.eval_every_s > 0:
        return run.eval_every_s
    return run.time_budget_s / 10 if run.time_budget_s > 0 else 1.0


def checkpoint_time(k: int, every_s: float, budget_s: float) -> float:
    """Training time of evaluation k >= 1; the time budget itself is always one."""
    t = k * every_s
    if budget_s > 0 and (t >= budget_s or budget_s - t < 1e-9):
        return budget_s
    return t


class TrainingTimeCadence:
    """Asynchronous runs: evaluation k at min(k * eval_every_s, run.time_budget_s) seconds of training.

    Each node pauses at its first iteration boundary past that time and joins the evaluation; a node
    stops at its own budget (run.iterations of its own iterations, or run.time_budget_s of training) and
    from then on only joins evaluations; the run ends at the first evaluation at which every node has
    stopped. Its nodes stop at different iterations, so such a run does not resume; its one checkpoint
    is the final one, numbered by evaluation round.
    """

    keep_checkpoints = 1

    def __init__(self, run: RunConfig) -> None:
        self.run = run
        self.every_s = eval_interval_s(run)
        self.round = 0
        self.progress_total = run.iterations

    def new_clock(self, elapsed_s: float = 0.0) -> TrainingClock:
        return TrainingClock(elapsed_s)

    def _due(self) -> float:
        return checkpoint_time(self.round + 1, self.every_s, self.run.time_budget_s)

    def finish_due(self, iteration: int, now_s: float) -> bool:
        budget = self.run.time_budget_s
        return iteration >= self.run.iterations or bool(budget and now_s >= budget)

    def evaluation_due(self, iteration: int, now_s: float, stepped: bool) -> bool:
        return now_s >= self._due()

    def stop_after(self, point: Any) -> bool:
        return point.all_finished

    def checkpoint_due(self, iteration: int, stepped: bool) -> bool:
        return False

    def done(self, iteration: int) -> bool:
        return False  # the end is decided at an evaluation (stop_after)

    def idle_s(self, now_s: float, finished: bool) -> float:
        """A finished node idles until the next agreed evaluation; receiving goes on meanwhile."""
        return min(self._due() - now_s, 0.02) if finished else 0.0

    def describe(self, iteration: int) -> str:
        return f"evaluation at checkpoint {self.round + 1}"

    def evaluated(self) -> None:
        self.round += 1

    def final_checkpoint(self, iteration: int) -> int:
        return self.round

    def summary_values(self) -> dict[str, Any]:
        return {"evaluations": self.round, "eval_every_s": self.every_s}

    def position(self, iteration: int, table: Mapping[str, np.ndarray]) -> tuple[int, float, dict[str, Any]]:
        """``iteration`` is the mean of the nodes' own counts (floored), ``time_s`` the training time at which
        the evaluated models were all in place (the latest model update of any node)."""
        return (int(table["iterations"].mean()), float(table["last_update_s"].max()),
                {"round": self.round + 1, "checkpoint_s": float(table["time_s"].mean())})
