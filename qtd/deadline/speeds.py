"""Emulated straggler speeds V_{i,t} (samples per second), shared by real runs and the simulator."""

from __future__ import annotations

from typing import Sequence

import numpy as np


class SpeedModel:
    """V_{i,t} for node i at iteration t: Uniform(low, high) drawn from a generator keyed by
    (seed, node, iteration), so a resumed run and the simulator see the same speeds; or fixed per node."""

    def __init__(self, distribution: str, low: float, high: float, speeds: Sequence[float] = (), seed: int = 0):
        self.distribution = distribution
        self.low, self.high = low, high
        self.speeds = tuple(speeds)
        self.seed = seed

    @classmethod
    def from_config(cls, emulation, seed: int) -> "SpeedModel":
        """The speeds an ``EmulationConfig`` describes: the same in real runs and in the simulator."""
        return cls(emulation.speed_distribution, emulation.speed_low, emulation.speed_high, emulation.speeds, seed)

    def speed(self, node: int, iteration: int) -> float:
        if self.distribution == "fixed":
            return float(self.speeds[node])
        rng = np.random.default_rng([self.seed, 0x5EED, node, iteration])
        return float(rng.uniform(self.low, self.high))

    def speeds_at(self, nodes: int, iteration: int) -> np.ndarray:
        return np.array([self.speed(i, iteration) for i in range(nodes)])

    @property
    def mean(self) -> float:
        if self.distribution == "fixed":
            return float(np.mean(self.speeds))
        return (self.low + self.high) / 2


def deadline_samples(speed: float, deadline_s: float) -> int:
    """Samples a node of this speed finishes before the deadline: floor(V * T_d)."""
    return int(np.floor(speed * deadline_s + 1e-9))
