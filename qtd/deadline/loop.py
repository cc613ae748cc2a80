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

    def run(self, step: StepFn, speed: float | None = None) -> GradientResult:
        start = time.monotonic()
        end = start + self.deadline_s
        cap = deadline_samples(speed, self.deadline_s) if speed else None
        samples, batches, loss_sum, busy = 0, 0, 0.0, 0.0
        while True:
            k = self.micro_batch_size
            if cap is not None:
                k = min(k, cap - samples)
            if self._per_sample_s is not None:
                fits = int((end - time.monotonic()) / self._per_sample_s)
                k = min(k, fits)
            if k < 1 or time.monotonic() >= end:
                break
            t0 = time.monotonic()
            loss_sum += step(k)
            self._sync()
            took = time.monotonic() - t0
            busy += took
            self._observe(k, took)
            samples += k
            batches += 1
            if speed:
                _sleep_until(start + samples / speed)
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
