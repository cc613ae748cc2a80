"""The wall-clock gradient loop: micro-batches until the deadline, paced to an emulated speed."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from .speeds import deadline_samples

StepFn = Callable[[int], float]
"""Computes the summed loss gradient of ``k`` fresh local samples, accumulating into the gradient
buffer, and returns the summed loss; it must return only once the work is complete."""


@dataclass(frozen=True)
class GradientResult:
    samples: int  # samples whose gradients were computed (and are in the gradient buffer)
    loss_sum: float
    micro_batches: int
    compute_s: float  # wall-clock seconds of the compute phase, pacing sleeps included
    busy_s: float  # seconds actually computing (no pacing sleeps)

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.samples if self.samples else float("nan")


class DeadlineTimer:
    """Runs micro-batches until ``deadline_s`` has passed, never starting one it predicts cannot finish
    in time, so the compute phase exceeds the deadline by at most about one micro-batch.

    The per-sample time estimate persists across iterations. With an emulated speed V the node also
    computes no faster than V samples per second (it sleeps the difference) and never more than
    floor(V * T_d) samples, what a V-speed node would finish.
    """

    def __init__(self, deadline_s: float, micro_batch_size: int, device: torch.device | None = None):
        self.deadline_s = deadline_s
        self.micro_batch_size = micro_batch_size
        self.device = device or torch.device("cpu")
        self._per_sample_s: float | None = None

    def _sync(self) -> None:
        # On a GPU kernels run asynchronously: a micro-batch counts only once its completion is observed.
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _observe(self, samples: int, seconds: float) -> None:
        per_sample = seconds / samples
        if self._per_sample_s is None:
            self._per_sample_s = per_sample
        else:
            self._per_sample_s = 0.7 * self._per_sample_s + 0.3 * per_sample

    def phase(self, speed: float | None = None) -> "DeadlinePhase":
        """A compute phase that starts now; the caller runs the micro-batches it allows (see :meth:`run`)."""
        return DeadlinePhase(self, speed)

    def run(self, step: StepFn, speed: float | None = None) -> GradientResult:
        phase = self.phase(speed)
        while k := phase.next_size(self.micro_batch_size):
            phase.done(k, step(k))
        return phase.result()


class DeadlinePhase:
    """One compute phase of a :class:`DeadlineTimer`, driven from outside: before each micro-batch ask
    :meth:`next_size` how many samples it may have (0: stop now), after it report :meth:`done`.

    :meth:`DeadlineTimer.run` drives it with a step function; the library's deadline iterator
    (:class:`qtd.api.Decentralized`) drives it with the batches of a user's own DataLoader, so both share
    one deadline rule, one per-sample estimate and one pacing.
    """

    def __init__(self, timer: DeadlineTimer, speed: float | None = None) -> None:
        self.timer, self.speed = timer, speed
        self.start = time.monotonic()
        self.end = self.start + timer.deadline_s
        self.cap = deadline_samples(speed, timer.deadline_s) if speed else None
        self.samples, self.batches, self.loss_sum, self.busy = 0, 0, 0.0, 0.0
        self._started = self.start

    def next_size(self, wanted: int, divisible: bool = True) -> int:
        """At most ``wanted`` samples for the next micro-batch: fewer when only fewer fit before the deadline
        (or the emulated cap floor(V * T_d)), 0 when none does. With ``divisible=False`` (a user's batch) a
        batch that does not fit in time whole is not started; the cap still cuts it. The clock starts now."""
        k = wanted
        if self.cap is not None:
            k = min(k, self.cap - self.samples)
        per_sample = self.timer._per_sample_s
        if per_sample is not None:
            fits = int((self.end - time.monotonic()) / per_sample)
            refused = fits < 1 if divisible else fits < k
            if refused and not self.batches:
                # Nothing fits this phase by the estimate alone: halve it, so that a node that was slow only
                # for a while (a warm-up, a busy neighbour process) tries again in a later phase and measures
                # itself, instead of never computing again on a stale estimate.
                self.timer._per_sample_s = per_sample / 2
            k = min(k, fits) if divisible or fits >= k else 0
        if k < 1 or time.monotonic() >= self.end:
            return 0
        self._started = time.monotonic()
        return k

    def done(self, k: int, loss_sum: float = 0.0) -> None:
        """The micro-batch of ``k`` samples that :meth:`next_size` allowed has finished."""
        self.timer._sync()
        took = time.monotonic() - self._started
        self.busy += took
        self.timer._observe(k, took)
        self.samples += k
        self.batches += 1
        self.loss_sum += loss_sum
        if self.speed:
            _sleep_until(self.start + self.samples / self.speed)

    def result(self) -> GradientResult:
        return GradientResult(self.samples, self.loss_sum, self.batches, time.monotonic() - self.start, self.busy)


class FixedBatchPhase:
    """The compute phase of a fixed-batch node: one micro-batch of the size asked for, taking at least
    size / speed seconds when paced. The same protocol as :class:`DeadlinePhase`."""

    def __init__(self, speed: float | None = None, device: torch.device | None = None) -> None:
        self.speed, self.device = speed, device
        self.start = self._started = time.monotonic()
        self.samples, self.batches, self.loss_sum, self.busy = 0, 0, 0.0, 0.0

    def next_size(self, wanted: int, divisible: bool = True) -> int:
        if self.batches:
            return 0
        self._started = time.monotonic()
        return wanted

    def done(self, k: int, loss_sum: float = 0.0) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.busy = time.monotonic() - self._started
        self.samples, self.batches, self.loss_sum = k, 1, loss_sum
        if self.speed:
            _sleep_until(self.start + k / self.speed)

    def result(self) -> GradientResult:
        return GradientResult(self.samples, self.loss_sum, self.batches, time.monotonic() - self.start, self.busy)


def compute_fixed_batch(step: StepFn, batch_size: int, speed: float | None = None,
                        device: torch.device | None = None) -> GradientResult:
    """One batch of ``batch_size`` samples, taking at least batch_size / speed seconds when paced."""
    phase = FixedBatchPhase(speed, device)
    k = phase.next_size(batch_size)
    phase.done(k, step(k))
    return phase.result()


def _sleep_until(when: float) -> None:
    remaining = when - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
