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

    The per-sample time estimate persists across iterations. It changes only when a micro-batch runs, so
    one stalled micro-batch (the first backward pass of a process can be 5-10x slower than the later ones;
    a descheduled moment on a busy machine) could make it predict that no sample ever fits again, and
    every later gradient would be empty. So after iterations in which nothing was predicted to fit, the
    node probes: it computes one sample and takes that measurement as the estimate. A healthy node is then
    back at work; one that really is too slow for T_d waits twice as many iterations before each next
    probe, so its overshoot is one sample, rarely.

    With an emulated speed V the node also computes no faster than V samples per second (it sleeps the
    difference) and never more than floor(V * T_d) samples, what a V-speed node would finish.
    """

    def __init__(self, deadline_s: float, micro_batch_size: int, device: torch.device | None = None):
        self.deadline_s = deadline_s
        self.micro_batch_size = micro_batch_size
        self.device = device or torch.device("cpu")
        self._per_sample_s: float | None = None
        self._empty = 0  # consecutive phases in which no sample was predicted to fit
        self._patience = 1  # empty phases before the next probe (doubles while probes find it too slow)

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
        self.starved = False  # nothing fitted when the phase began (by the estimate)
        self.probe = False  # ... and this phase runs one micro-batch anyway, to measure again (see DeadlineTimer)

    def next_size(self, wanted: int, divisible: bool = True) -> int:
        """At most ``wanted`` samples for the next micro-batch: fewer when only fewer fit before the deadline
        (or the emulated cap floor(V * T_d)), 0 when none does. With ``divisible=False`` (a user's batch) a
        batch that does not fit in time whole is not started; the cap still cuts it. The clock starts now."""
        k = wanted
        if self.cap is not None:
            k = min(k, self.cap - self.samples)
        if k < 1:
            return 0
        now = time.monotonic()
        allowed = k if now < self.end else 0
        per_sample = self.timer._per_sample_s
        if per_sample is not None:
            fits = int((self.end - now) / per_sample)
            allowed = min(allowed, fits) if divisible else (allowed if fits >= k else 0)
        if allowed < 1 and not self.batches and not self.starved:  # nothing fits, before anything ran
            self.starved = True
            if self.timer._empty >= self.timer._patience:  # probe: one sample (a user's batch: one batch)
                self.probe, allowed = True, (1 if divisible else k)
        if allowed < 1:
            return 0
        self._started = time.monotonic()
        return allowed

    def done(self, k: int, loss_sum: float = 0.0) -> None:
        """The micro-batch of ``k`` samples that :meth:`next_size` allowed has finished."""
        self.timer._sync()
        took = time.monotonic() - self._started
        self.busy += took
        if self.probe:  # a fresh measurement replaces the estimate that stopped the node; then as usual
            self.timer._per_sample_s, self.probe = took / k, False
        else:
            self.timer._observe(k, took)
        self.samples += k
        self.batches += 1
        self.loss_sum += loss_sum
        if self.speed:
            _sleep_until(self.start + self.samples / self.speed)

    def result(self) -> GradientResult:
        timer = self.timer
        if self.starved and self.batches == 0:
            timer._empty += 1
        elif self.starved:  # probed: back to work if more than the probe fitted, else wait longer next time
            timer._empty, timer._patience = 0, (1 if self.batches > 1 else 2 * timer._patience)
        else:
            timer._empty, timer._patience = 0, 1
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
