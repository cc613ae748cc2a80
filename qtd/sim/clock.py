"""The simulator's virtual clock: the paper's time model (README, "Simulating"), pure arithmetic, read off
each algorithm's spec: its gradient mode gives the compute term, its runner the communication term.

Every cost is charged by one link rule, the one real runs emulate (:class:`qtd.costs.LinkModel`): a link
carries one 16-bit copy of the model (2p bytes) in T_c = ``emulation.comm_time_s`` seconds, plus
``emulation.link_latency_s`` per message. Hence, per iteration (or per asynchronous step):

- compute, deadline-bound (QuanTimed-DSGD):     T_d
- compute, fixed batch, synchronous:            max_j B / V_{j,t}   (everyone waits for the slowest)
- compute, fixed batch, asynchronous, node j:   B / V_{j,k}         (its own pace, no waiting)
- communication, gossip (s-bit messages):       c_s = latency + T_c * s / 16   (s = 32: 2 T_c; the 40-byte
  header is counted in ``bytes_sent`` but not in time, as in the paper)
- communication, collective (ring, float32 grads): 2 (n - 1) (latency + T_c * (4p // n) / (2p))
                                                 = 4 T_c (n - 1) / n   without latency

The iteration costs compute + communication, or their max with ``algorithm.overlap`` (the exchange runs
during the gradient computation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..algorithms import AlgorithmSpec, Gradient, Runner
from ..costs import LinkModel

FLOAT32_BYTES = 4


@dataclass(frozen=True)
class TimeModel:
    """Virtual seconds of each phase for a model of ``numel`` parameters on ``nodes`` nodes."""

    comm_time_s: float  # T_c: one 16-bit model copy over one link
    latency_s: float
    nodes: int
    numel: int
    overlap: bool

    def message_s(self, bits: int) -> float:
        """One s-bit copy of the model over one link: latency + T_c * s / 16."""
        return self.latency_s + self.comm_time_s * bits / 16

    def allreduce_s(self) -> float:
        """A ring all-reduce of the float32 gradient, by the link rule real runs emulate."""
        link = LinkModel.from_copy_time(self.comm_time_s, self.numel, self.latency_s)
        return link.ring_allreduce_s(FLOAT32_BYTES * self.numel, self.nodes)

    def combine(self, compute_s: float, comm_s: float) -> float:
        return max(compute_s, comm_s) if self.overlap else compute_s + comm_s

    def compute_s(self, spec: AlgorithmSpec, deadline_s: float, batch_size: int, speeds: Sequence[float]) -> float:
        """The compute term of one iteration (one step, for an asynchronous node: ``speeds`` holds its speed)."""
        if spec.gradient is Gradient.DEADLINE:
            return deadline_s
        return max(batch_size / v for v in speeds)

    def comm_s(self, spec: AlgorithmSpec, bits: int) -> float:
        if spec.runner is Runner.COLLECTIVE:
            return self.allreduce_s()
        return self.message_s(bits)

    def iteration_s(self, spec: AlgorithmSpec, deadline_s: float, batch_size: int, speeds: Sequence[float],
                    bits: int) -> float:
        return self.combine(self.compute_s(spec, deadline_s, batch_size, speeds), self.comm_s(spec, bits))

    def formula(self, spec: AlgorithmSpec) -> str:
        """The rule in words, for summary.json."""
        plus = "max" if self.overlap else "sum"
        comm = ("2(n-1)(latency + T_c*(4p//n)/(2p))" if spec.runner is Runner.COLLECTIVE
                else f"latency + T_c*s/16 (T_c={self.comm_time_s:g}, latency={self.latency_s:g})")
        if spec.runner is Runner.ASYNC:
            return f"node j's step k ends {plus}(B/V_jk, {comm}) after its previous one"
        compute = "T_d" if spec.gradient is Gradient.DEADLINE else "max_j B/V_j"
        return f"{plus}({compute}, {comm}) per iteration"
