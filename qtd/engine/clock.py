"""The training clock of asynchronous runs: wall-clock seconds of training, evaluation pauses taken out."""

from __future__ import annotations

import time
from collections import deque


class TrainingClock:
    """Seconds of training since the start: wall-clock time with evaluation pauses taken out.

    Wall times (``time.time()``) are what messages carry, so that a receiver can age a model produced
    by another process; :meth:`age` turns such a time into training seconds on this node.
    """

    def __init__(self, elapsed_s: float = 0.0) -> None:
        self._start = time.time() - elapsed_s
        self._paused_s = 0.0
        self._pause_started: float | None = None
        self._pauses: deque[tuple[float, float]] = deque(maxlen=256)

    def now(self) -> float:
        at = self._pause_started if self._pause_started is not None else time.time()
        return at - self._start - self._paused_s

    def pause(self) -> None:
        if self._pause_started is None:
            self._pause_started = time.time()

    def resume(self) -> None:
        if self._pause_started is not None:
            ended = time.time()
            self._paused_s += ended - self._pause_started
            self._pauses.append((self._pause_started, ended))
            self._pause_started = None

    def add(self, iteration_s: float) -> None:
        pass  # wall-clock time passes by itself

    def age(self, since_wall: float) -> float:
        """Training seconds between wall time ``since_wall`` and now (this node's pauses excluded)."""
        now = time.time()
        paused = sum(max(0.0, min(end, now) - max(begin, since_wall)) for begin, end in self._pauses)
        return max(0.0, now - since_wall - paused)


class SteppedClock:
    """The training time of synchronous runs: the sum of the iterations' own durations, so evaluations,
    checkpoints and logging between iterations are not training time. Resumes where a checkpoint left it."""

    def __init__(self, elapsed_s: float = 0.0) -> None:
        self.elapsed_s = elapsed_s

    def now(self) -> float:
        return self.elapsed_s

    def add(self, iteration_s: float) -> None:
        self.elapsed_s += iteration_s

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass
