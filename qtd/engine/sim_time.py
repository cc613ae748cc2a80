"""The simulator's virtual clock: the paper's time model (DESIGN.md section 2), pure arithmetic.

Every cost is charged by one link rule, the one real runs emulate (:class:`qtd.comm.LinkModel`): a link
carries one 16-bit copy of the model (2p bytes) in T_c = ``emulation.comm_time_s`` seconds, plus
``emulation.link_latency_s`` per message. Hence, per iteration (or per asynchronous step):

- message of s-bit values (gossip):      c_s = latency + T_c * s / 16    (s = 32: 2 T_c; the 40-byte
  header is counted in ``bytes_sent`` but not in time, as in the paper)
- QuanTimed-DSGD:                        T_d + c_s
- Q-DSGD, DSGD:                          max_j B / V_{j,t} + c_s        (DSGD sends s = 16: c_16 = T_c)
- all-reduce SGD (ring, float32 grads):  max_j B / V_{j,t} + 2 (n - 1) (latency + T_c * (4p // n) / (2p))
                                         = max_j B / V_{j,t} + 4 T_c (n - 1) / n   without latency
- asynchronous DSGD, node j, step k:     B / V_{j,k} + c_s              (its own pace, no waiting)

With ``algorithm.overlap`` the exchange runs during the gradient computation and every "+" between the
compute and the communication term becomes a max.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..comm.links import LinkModel

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

    def fixed_batch_s(self, batch_size: int, speeds: Sequence[float]) -> float:
        """The slowest node's time for a batch of B samples: max_j B / V_j."""
        return max(batch_size / v for v in speeds)

    def quantimed_iteration_s(self, deadline_s: float, bits: int) -> float:
        return self.combine(deadline_s, self.message_s(bits))

    def gossip_iteration_s(self, batch_size: int, speeds: Sequence[float], bits: int) -> float:
        """Q-DSGD and DSGD: every node waits for the slowest gradient, then for the exchange."""
        return self.combine(self.fixed_batch_s(batch_size, speeds), self.message_s(bits))

    def allreduce_iteration_s(self, batch_size: int, speeds: Sequence[float]) -> float:
        return self.combine(self.fixed_batch_s(batch_size, speeds), self.allreduce_s())

    def async_step_s(self, batch_size: int, speed: float, bits: int) -> float:
        """One asynchronous DSGD step of a node of speed V: B / V + c_s."""
        return self.combine(batch_size / speed, self.message_s(bits))

    def formula(self, algorithm: str) -> str:
        """The rule in words, for summary.json."""
        plus = "max" if self.overlap else "sum"
        comm = f"latency + T_c*s/16 (T_c={self.comm_time_s:g}, latency={self.latency_s:g})"
        return {
            "quantimed": f"{plus}(T_d, {comm}) per iteration",
            "qdsgd": f"{plus}(max_j B/V_j, {comm}) per iteration",
            "dsgd": f"{plus}(max_j B/V_j, {comm}) per iteration",
            "allreduce_sgd": f"{plus}(max_j B/V_j, 2(n-1)(latency + T_c*(4p//n)/(2p))) per iteration",
            "async_dsgd": f"node j's step k ends {plus}(B/V_jk, {comm}) after its previous one",
        }[algorithm]
