"""What a one-box cluster looks like: machines, their CPU shares over time and their links (pure).

A *machine* is one network namespace with one address and one CPU cgroup, running one ``torchrun``
agent and its ``nproc_per_node`` processes. Shares are in cores (0.25 = a quarter of one core, enforced
as ``cpu.cfs_quota_us / cpu.cfs_period_us``); rates in Mbit/s (10^6 bit/s, tc's ``mbit``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import ConfigError

MAX_MACHINES = 150  # addresses .100 to .249 of one /24: equal-length strings, so torchrun's rank order is ours
MIN_QUOTA_US = 1000  # the kernel refuses a smaller cfs quota
MAX_RATE_MBIT = 100_000.0


def _fail(option: str, value: object, allowed: str) -> None:
    raise ConfigError(f"{option} {value!r} is not allowed: {allowed}")


@dataclass(frozen=True)
class CpuModel:
    """Each machine's CPU share in cores: fixed (``shares``, one per machine), redrawn from
    Uniform(low, high) every ``redraw_s`` seconds (seeded per machine and draw), or unlimited."""

    kind: str = "unlimited"  # "unlimited", "fixed" or "uniform"
    shares: tuple[float, ...] = ()
    low: float = 0.0
    high: float = 0.0
    redraw_s: float = 0.0
    seed: int = 0
    period_us: int = 20_000

    def __post_init__(self) -> None:
        if self.kind not in ("unlimited", "fixed", "uniform"):
            _fail("cpu model", self.kind, "use unlimited, fixed or uniform")
        if not 1000 <= self.period_us <= 1_000_000:
            _fail("--cpu-period-ms", self.period_us / 1000, "use 1 to 1000 ms")
        smallest = MIN_QUOTA_US / self.period_us
        values = self.shares if self.kind == "fixed" else (self.low, self.high) if self.kind == "uniform" else ()
        for share in values:
            if not (math.isfinite(share) and share > 0):
                _fail("--cpu-share", share, "a share is a positive number of cores, e.g. 0.25")
            if share < smallest - 1e-12:
                _fail("--cpu-share", share, f"the smallest share at --cpu-period-ms {self.period_us / 1000:g} is "
                      f"{smallest:g} cores (a 1 ms quota); raise --cpu-period-ms for smaller shares")
        if self.kind == "uniform":
            if self.low > self.high:
                _fail("--cpu-share-range", f"{self.low:g},{self.high:g}", "give LOW,HIGH with LOW <= HIGH")
            if not (math.isfinite(self.redraw_s) and self.redraw_s > 0):
                _fail("--redraw-s", self.redraw_s, "redrawn shares need a positive interval in seconds")

    def share(self, machine: int, elapsed_s: float) -> float | None:
        """The share of ``machine`` ``elapsed_s`` seconds after its throttling began (None: unlimited)."""
        if self.kind == "unlimited":
            return None
        if self.kind == "fixed":
            return self.shares[machine]
        draw = int(elapsed_s // self.redraw_s)
        rng = np.random.default_rng([self.seed, 0xC9, machine, draw])
        return float(rng.uniform(self.low, self.high))

    def next_change_s(self, elapsed_s: float) -> float | None:
        """Seconds after the throttling began at which the share next changes (None: never)."""
        if self.kind != "uniform":
            return None
        return (math.floor(elapsed_s / self.redraw_s) + 1) * self.redraw_s

    def quota_us(self, share: float | None) -> int:
        """cpu.cfs_quota_us for ``share`` at this period (-1: no limit)."""
        if share is None:
            return -1
        return max(MIN_QUOTA_US, round(share * self.period_us))

    def describe(self) -> str:
        if self.kind == "unlimited":
            return "CPU unlimited"
        if self.kind == "fixed":
            return "CPU shares " + ",".join(f"{s:g}" for s in self.shares) + " cores"
        return f"CPU shares ~ Uniform({self.low:g}, {self.high:g}) cores, redrawn every {self.redraw_s:g} s"


@dataclass(frozen=True)
class LinkModel:
    """Egress shaping per machine: ``uplink_mbit[m]`` for everything machine m sends (None: unshaped), and
    ``pair_mbit[(a, b)]`` for what a sends to b (given both ways), never above a's uplink."""

    uplink_mbit: tuple[float | None, ...] = ()
    pair_mbit: dict[tuple[int, int], float] = field(default_factory=dict)

    def shaped(self, machine: int) -> bool:
        return self.uplink_mbit[machine] is not None or any(a == machine for a, _ in self.pair_mbit)

    def describe(self) -> str:
        rates = {r for r in self.uplink_mbit}
        text = ("uplinks unshaped" if rates == {None} else
                f"uplinks {next(iter(rates)):g} Mbit/s" if len(rates) == 1 else
                "uplinks " + ",".join("-" if r is None else f"{r:g}" for r in self.uplink_mbit) + " Mbit/s")
        if self.pair_mbit:
            text += ", pairs " + " ".join(f"{a}->{b}={r:g}" for (a, b), r in sorted(self.pair_mbit.items()))
        return text


@dataclass(frozen=True)
class ClusterSpec:
    """The machines of one run and how they are throttled and linked."""

    machines: int
    nproc_per_node: int
    cpu: CpuModel
    links: LinkModel
    startup_share: float | None = 1.0  # cores before a machine's throttling begins (None: unlimited)
    cpu_weight: float | None = None  # the run's CPU weight per process while the quotas fit the box (None: 4)

    def __post_init__(self) -> None:
        if not 1 <= self.machines <= MAX_MACHINES:
            _fail("--machines", self.machines, f"use 1..{MAX_MACHINES}")
        if self.nproc_per_node < 1:
            _fail("--nproc-per-node", self.nproc_per_node, "use a whole number >= 1")
        if self.cpu.kind == "fixed" and len(self.cpu.shares) != self.machines:
            _fail("--cpu-share", ",".join(f"{s:g}" for s in self.cpu.shares),
                  f"give one share for all machines or one per machine ({self.machines})")
        if len(self.links.uplink_mbit) != self.machines:
            _fail("--uplink-mbit", ",".join(map(str, self.links.uplink_mbit)),
                  f"give one rate for all machines or one per machine ({self.machines})")
        for (a, b) in self.links.pair_mbit:
            if not (0 <= a < self.machines and 0 <= b < self.machines) or a == b:
                _fail("--pair-mbit", f"{a}-{b}", f"name two different machines in 0..{self.machines - 1}")
        if self.cpu_weight is not None and not (math.isfinite(self.cpu_weight) and 0 < self.cpu_weight <= 64):
            _fail("--cpu-weight", self.cpu_weight, "use a number in (0, 64]: the run's CPU weight per process, "
                  "relative to an ordinary process")
        if self.startup_share is not None and not (
                math.isfinite(self.startup_share) and self.startup_share * self.cpu.period_us >= MIN_QUOTA_US):
            _fail("--startup-share", self.startup_share, f"give at least {MIN_QUOTA_US / self.cpu.period_us:g} "
                  "cores, or 0 for no limit")

    @property
    def weight(self) -> float:
        """CPU weight per process while the quotas fit in the box (``runner`` uses 1 otherwise)."""
        return 4.0 if self.cpu_weight is None else self.cpu_weight


def parse_numbers(option: str, text: str, count: int, lowest: float = 0.0, highest: float = math.inf,
                  allow_none: bool = False) -> tuple[float | None, ...]:
    """'0.5' or '0.5,0.25,...' -> ``count`` numbers (one value is used for all); '-' means none where allowed."""
    parts = [p.strip() for p in text.split(",")]
    values: list[float | None] = []
    for part in parts:
        if allow_none and part in ("-", "none"):
            values.append(None)
            continue
        try:
            value = float(part)
        except ValueError:
            _fail(option, text, f"{part!r} is not a number; give one value or {count} comma-separated values")
        if not (math.isfinite(value) and lowest < value <= highest):
            _fail(option, text, f"each value must be > {lowest:g} and <= {highest:g}")
        values.append(value)
    if len(values) == 1:
        values = values * count
    if len(values) != count:
        _fail(option, text, f"give one value for all {count} machines or exactly {count} values")
    return tuple(values)


_PAIR = re.compile(r"^(\d+)-(\d+)=([0-9.eE+-]+)$")


def parse_pairs(items: Sequence[str]) -> dict[tuple[int, int], float]:
    """['0-1=4', ...] -> {(0, 1): 4.0, (1, 0): 4.0}: a pair's rate applies both ways."""
    pairs: dict[tuple[int, int], float] = {}
    for item in items:
        match = _PAIR.match(item.strip())
        if not match:
            _fail("--pair-mbit", item, "write A-B=RATE, e.g. 0-1=4 for 4 Mbit/s between machines 0 and 1")
        a, b, rate = int(match[1]), int(match[2]), float(match[3])
        if not (math.isfinite(rate) and 0 < rate <= MAX_RATE_MBIT):
            _fail("--pair-mbit", item, f"the rate must be > 0 and <= {MAX_RATE_MBIT:g} Mbit/s")
        pairs[(a, b)] = pairs[(b, a)] = rate
    return pairs
