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
        self._empty = 0  # consecutive iterations in which no sample was predicted to fit
        self._patience = 1  # empty iterations before the next probe (doubles while probes find it too slow)

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

    def run(self, step: StepFn, speed: float | None = None) -> GradientResult:
        start = time.monotonic()
        end = start + self.deadline_s
        cap = deadline_samples(speed, self.deadline_s) if speed else None
        samples, batches, loss_sum, busy = 0, 0, 0.0, 0.0
        starved = (self._per_sample_s is not None and (cap is None or cap > 0)
                   and int(self.deadline_s / self._per_sample_s) < 1)
        probe = starved and self._empty >= self._patience
        while True:
            k = self.micro_batch_size
            if cap is not None:
                k = min(k, cap - samples)
            if probe:
                k = min(k, 1)
            elif self._per_sample_s is not None:
                fits = int((end - time.monotonic()) / self._per_sample_s)
                k = min(k, fits)
            if k < 1 or (time.monotonic() >= end and not probe):
                break
            t0 = time.monotonic()
            loss_sum += step(k)
            self._sync()
            took = time.monotonic() - t0
            busy += took
            if probe:  # a fresh measurement replaces the estimate that stopped the node
                self._per_sample_s, probe = took / k, False
            else:
                self._observe(k, took)
            samples += k
            batches += 1
            if speed:
                _sleep_until(start + samples / speed)
        if starved and batches == 0:
            self._empty += 1
        elif starved:  # probed: back to work if more than the probe fitted, else wait longer next time
            self._empty, self._patience = 0, (1 if batches > 1 else 2 * self._patience)
        else:
            self._empty, self._patience = 0, 1
        return GradientResult(samples, loss_sum, batches, time.monotonic() - start, busy)


def compute_fixed_batch(step: StepFn, batch_size: int, speed: float | None = None,
                        device: torch.device | None = None) -> GradientResult:
    """One batch of ``batch_size`` samples, taking at least batch_size / speed seconds when paced."""
    start = time.monotonic()
    loss_sum = step(batch_size)
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    busy = time.monotonic() - start
    if speed:
        _sleep_until(start + batch_size / speed)
    return GradientResult(batch_size, loss_sum, 1, time.monotonic() - start, busy)


def _sleep_until(when: float) -> None:
    remaining = when - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
