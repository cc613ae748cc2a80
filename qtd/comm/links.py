"""Emulated links (README: "Emulating stragglers and slow links"): a message of b bytes is usable no earlier than
latency + b / bandwidth after it was sent. Pure arithmetic; the exchange applies it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LinkModel:
    """One link's emulated cost. ``bandwidth_Bps`` of 0 means unlimited."""

    latency_s: float = 0.0
    bandwidth_Bps: float = 0.0

    @classmethod
    def from_copy_time(cls, comm_time_s: float, model_numel: int, latency_s: float = 0.0) -> "LinkModel":
        """A link on which one 16-bit copy of a ``model_numel``-parameter model takes ``comm_time_s``
        (the paper's T_c), so every algorithm's traffic is charged by the same bytes-per-second rule."""
        bandwidth = 2.0 * model_numel / comm_time_s if comm_time_s > 0 else 0.0
        return cls(latency_s=latency_s, bandwidth_Bps=bandwidth)

    @property
    def enabled(self) -> bool:
        return self.latency_s > 0 or self.bandwidth_Bps > 0

    def delay_s(self, nbytes: int) -> float:
        """Seconds from send to availability for one message of ``nbytes``."""
        transfer = nbytes / self.bandwidth_Bps if self.bandwidth_Bps > 0 else 0.0
        return self.latency_s + transfer

    def ring_allreduce_s(self, nbytes: int, world_size: int) -> float:
        """A ring all-reduce of ``nbytes`` is 2(n-1) sequential messages of nbytes/n each."""
        if world_size < 2:
            return 0.0
        steps = 2 * (world_size - 1)
        return steps * self.delay_s(nbytes // world_size)


def ring_allreduce_bytes(nbytes: int, world_size: int) -> int:
    """Bytes a ring all-reduce sends from each rank: 2(n-1)/n of the buffer."""
    if world_size < 2:
        return 0
    return 2 * (world_size - 1) * (nbytes // world_size)


def ring_allgather_bytes(message_nbytes: int, world_size: int) -> int:
    """Bytes a ring all-gather sends from each rank: the n - 1 messages it forwards, its own included."""
    if world_size < 2:
        return 0
    return (world_size - 1) * message_nbytes
