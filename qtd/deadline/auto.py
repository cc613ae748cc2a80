"""``algorithm.deadline_s: auto``: the deadline T_d chosen online from what the nodes measure.

Pure arithmetic on floats, shared by the real engine and the simulator (and free of torch and of the
network): each node records, per iteration, the time its exchange took, its compute phase and samples, the
gradient noise of its micro-batches and (QuanTimed) the rounding noise of its own message; at every
evaluation the nodes' window means travel in the evaluation's gathered table (no extra round), and every
node computes the same next T_d from the same table.

The rule is the critical-batch model of SGD (McCandlish et al., "An Empirical Model of Large-Batch
Training", 2018) with the time model of an iteration. Steps to a given loss grow as S_min (1 + v / |G|^2),
where v is the variance of the network-average step in gradient units and |G|^2 the squared true gradient.
With node i computing V_i T_d samples, v = tr(Sigma) / n^2 * sum_i 1 / (V_i T_d) + q, where q is the rounding
noise the exchange adds to the average (QuanTimed: (1/(n alpha))^2 sum_j (1 - w_jj)^2 |Q(x_j) - x_j|^2; zero for
CHOCO's difference exchange, whose consensus step leaves the average unchanged). With A = tr(Sigma) sum_i
(1/V_i) / (n^2 |G|^2) seconds and b = q / |G|^2, the time to the loss is proportional to

- without overlap: (1 + b + A / T_d) (T_d + T_x), smallest at T_d = sqrt(A T_x / (1 + b));
- with overlap:    (1 + b + A / T_d) max(T_d, T_x), smallest at T_d = T_x (below it the exchange sets the
  pace and more samples are free; above it the iteration grows with T_d).

T_x is the measured exchange time. With overlap it is seen only when the exchange outlasts the compute
phase (the wait after it); while it stays hidden, T_d shrinks by ``SHRINK`` per window to find it, and once
seen creeps by ``PROBE`` below the last exchange time seen, so a link that became faster is found too.
tr(Sigma) comes from two halves of each node's samples (groups A and B, sums S_A and S_B, S = S_A + S_B over
N samples): Q = |S_A|^2/n_A + |S_B|^2/n_B - |S|^2/N is an unbiased estimate of tr(Sigma) (:func:`noise_terms`).
|G|^2 is the network average's: a node's own gradient also pulls its model back from where rounding and
consensus left it, which says nothing about the average's progress, so the evaluation's all-reduce of the
models carries the nodes' gradients too, summed over the window (no extra round): the square of their mean
less its sampling noise estimates it. While no gradient shows above its noise, T_d holds. Every network
quantity is smoothed across windows (exponential averages of numerator and denominator, as McCandlish et al.
do) and one window changes T_d by at most a factor ``MAX_STEP``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

RULE_VERSION = 2  # bumped whenever the rule changes what it chooses (benchmarks key their cached runs on it)
SMOOTHING = 0.5  # weight of the newest window in the exponential averages
MAX_STEP = 2.0  # one window changes T_d by at most this factor
SHRINK = 0.7  # overlap, exchange hidden behind the compute phase and never seen: T_d shrinks by this factor
PROBE = 0.95  # ... hidden, once seen: T_d creeps below the last exchange time seen (it may have become faster)
MIN_DEADLINE_S = 1e-3
MAX_DEADLINE_S = 3600.0
HIDDEN = 0.5  # overlap: the exchange counts as hidden when fewer than this share of iterations waited for it
# overlap: the exchange counts as seen when the wait after the compute phase exceeds this
WAITED_S, WAITED_SHARE = 1e-3, 0.05
MEAN_GRAD_SQ = "auto_mean_grad_sq"  # |window mean of mean_i g_i|^2, from the evaluation's all-reduce


def noise_terms(sq_a: float, n_a: int, sq_b: float, n_b: int, sq_total: float) -> tuple[float, float] | None:
    """Unbiased estimates (tr(Sigma), |G|^2) from the squared norms of two groups' gradient sums and of
    their total; None when a group is empty."""
    if n_a < 1 or n_b < 1:
        return None
    n = n_a + n_b
    trace = sq_a / n_a + sq_b / n_b - sq_total / n
    return trace, (sq_total / n - trace) / n


def seen_exchange_s(compute_s: float, wait_s: float, overlap: bool) -> float | None:
    """The exchange time an iteration shows: without overlap the wait itself; with overlap compute + wait when
    the exchange outlasted the compute phase, else None (hidden: it took at most ``compute_s``)."""
    if not overlap:
        return wait_s
    return compute_s + wait_s if wait_s > WAITED_S + WAITED_SHARE * compute_s else None


def best_deadline(exchange_s: float, seconds_per_noise: float, rounding: float, overlap: bool) -> float:
    """The T_d of the time model (module docstring): ``seconds_per_noise`` is A, ``rounding`` is b."""
    if overlap:
        return exchange_s
    return math.sqrt(max(seconds_per_noise, 0.0) * exchange_s / (1.0 + max(rounding, 0.0)))


@dataclass
class _Window:
    """One node's sums since the last agreement."""

    iterations: int = 0
    exchange_s: float = 0.0  # summed over the iterations whose exchange time was seen
    waited: int = 0  # ... and their count
    inverse_speed: float = 0.0  # compute_s / samples, summed over iterations with samples
    computed: int = 0
    trace: float = 0.0
    noisy: int = 0  # iterations with both halves non-empty
    rounding: float = 0.0
    inverse_samples: float = 0.0  # 1 / samples, summed over the iterations (0 for one without samples)


@dataclass
class AutoDeadline:
    """One node's view of the self-tuning deadline; every node holds the same :attr:`deadline_s`."""

    deadline_s: float  # the T_d of the current window
    overlap: bool
    nodes: int
    window: _Window = field(default_factory=_Window)
    smoothed: dict[str, float] = field(default_factory=dict)  # network quantities, the same on every node

    def record(self, compute_s: float, exchange_s: float | None, samples: int,
               noise: tuple[float, float] | None, rounding: float = 0.0) -> None:
        """One iteration of this node: ``exchange_s`` the exchange time if it was seen (None: hidden behind
        the compute phase), ``noise`` the (tr(Sigma), |G|^2) of :func:`noise_terms`, ``rounding`` this node's
        (1 - w_ii)^2 |Q(x_i) - x_i|^2 / alpha^2 (0 where the exchange leaves the average unchanged)."""
        w = self.window
        w.iterations += 1
        if exchange_s is not None:
            w.exchange_s += exchange_s
            w.waited += 1
        if samples:
            w.inverse_speed += compute_s / samples
            w.computed += 1
        if noise is not None:
            w.trace += noise[0]
            w.noisy += 1
        w.rounding += rounding
        w.inverse_samples += 1.0 / samples if samples else 0.0

    def values(self) -> dict[str, float]:
        """This node's window means for the evaluation's gathered table (nan where nothing was measured)."""
        w = self.window

        def mean(total: float, count: int) -> float:
            return total / count if count else math.nan

        return {"auto_exchange_s": mean(w.exchange_s, w.waited), "auto_waited": mean(w.waited, w.iterations),
                "auto_inverse_speed": mean(w.inverse_speed, w.computed), "auto_trace": mean(w.trace, w.noisy),
                "auto_rounding": mean(w.rounding, w.iterations), "auto_iterations": float(w.iterations),
                "auto_inverse_samples": mean(w.inverse_samples, w.iterations)}

    def agree(self, table: Mapping[str, Sequence[float]]) -> float:
        """The next window's T_d from every node's :meth:`values` (the same table on every node gives the
        same answer); starts a new window."""
        self.window = _Window()
        if not any(count > 0 for count in table["auto_iterations"]):
            return self.deadline_s

        def network_mean(key: str) -> float | None:
            seen = [v for v in table[key] if math.isfinite(v)]
            return sum(seen) / len(seen) if seen else None

        n = self.nodes
        inverse = network_mean("auto_inverse_speed")
        trace = network_mean("auto_trace")
        measured = {
            "exchange_s": network_mean("auto_exchange_s"),
            "trace": trace,
            "grad_sq": self._average_grad_sq(table, trace),
            # sum_i 1/V_i over the n nodes, and sum_j of the rounding terms, over n^2
            "inverse_speed": None if inverse is None else inverse / n,
            "rounding": sum(v for v in table["auto_rounding"] if math.isfinite(v)) / (n * n),
        }
        for key, value in measured.items():
            if value is not None:
                old = self.smoothed.get(key)
                self.smoothed[key] = value if old is None else (1 - SMOOTHING) * old + SMOOTHING * value
        waited = network_mean("auto_waited") or 0.0
        target = self._target(hidden=self.overlap and waited < HIDDEN)
        low, high = self.deadline_s / MAX_STEP, self.deadline_s * MAX_STEP
        self.deadline_s = min(max(target, low, MIN_DEADLINE_S), high, MAX_DEADLINE_S)
        return self.deadline_s

    def _average_grad_sq(self, table: Mapping[str, Sequence[float]], trace: float | None) -> float | None:
        """|G|^2 of the network average's gradient: |g_w|^2, g_w the mean over the window's K iterations of
        mean_i g_i (every node has the same, from the evaluation's all-reduce), less its sampling noise
        tr(Sigma) sum_i mean_t(1/b_it) / (n^2 K)."""
        if MEAN_GRAD_SQ not in table or trace is None:
            return None
        mean_sq, window = float(table[MEAN_GRAD_SQ][0]), max(table["auto_iterations"])
        inverse = [v for v in table["auto_inverse_samples"] if math.isfinite(v)]
        if not inverse or not math.isfinite(mean_sq) or window < 1:
            return None
        return mean_sq - trace * sum(inverse) / (self.nodes ** 2 * window)

    def _target(self, hidden: bool) -> float:
        s = self.smoothed
        if "exchange_s" not in s:  # the exchange never outlasted the compute phase: look lower
            return self.deadline_s * SHRINK if self.overlap else self.deadline_s
        if hidden:
            return min(self.deadline_s, s["exchange_s"]) * PROBE
        if self.overlap:
            return s["exchange_s"]
        grad_sq = s.get("grad_sq", 0.0)
        if "trace" not in s or "inverse_speed" not in s or grad_sq <= 0:
            return self.deadline_s  # no gradient measured above its noise: nothing to go by, hold
        seconds_per_noise = s["trace"] * s["inverse_speed"] / grad_sq
        return best_deadline(s["exchange_s"], seconds_per_noise, s["rounding"] / grad_sq, overlap=False)

    def state_dict(self) -> dict[str, Any]:
        return {"auto_deadline_s": self.deadline_s, "auto_smoothed": dict(self.smoothed)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "auto_deadline_s" in state:
            self.deadline_s = float(state["auto_deadline_s"])
            self.smoothed = {k: float(v) for k, v in state["auto_smoothed"].items()}
