"""``summary.json``: the keys the README lists under "What a run writes", written in one place for real and simulated runs."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..algorithms import AlgorithmSpec
from ..config import Config
from .points import EvalPoint, finite_or_none


def wire_bits(spec: AlgorithmSpec, config: Config) -> int | None:
    """What one value costs on the wire: compression.bits for model messages, 32 for float32 gradients; None
    where it is no one number (CHOCO's TopK or sign differences: bytes_sent says what they cost)."""
    if config.compression.differences != "grid":
        return None
    if spec.allowed_bits:
        return config.compression.bits
    return 32 if spec.sends_float32_gradients else None


def build_summary(*, algorithm: str, spec: AlgorithmSpec, config: Config, nodes: int, point: EvalPoint,
                  samples_per_iteration: Sequence[float], bytes_sent_per_node: Sequence[int], backend: str,
                  device: str, wall_s: float, extra: Mapping[str, Any] = ()) -> dict[str, Any]:
    """Final metrics (flat keys), per-node batch sizes and traffic, then the run kind's own keys."""
    summary: dict[str, Any] = {
        "algorithm": algorithm, "mode": config.mode, "nodes": nodes, "iterations": point.iteration,
        "time_s": point.time_s, "eval_loss": finite_or_none(point.eval_loss),
        "eval_accuracy": finite_or_none(point.eval_accuracy),
        "consensus_error": finite_or_none(point.consensus_error), "bytes_sent": point.bytes_sent,
        "eval_bytes": point.eval_bytes,
    }
    bits = wire_bits(spec, config)
    if bits is not None:
        summary["bits"] = bits
    if config.compression.block_size:
        summary["block_size"] = config.compression.block_size
    summary.update({"samples_per_iteration": [round(float(v), 3) for v in samples_per_iteration],
                    "bytes_sent_per_node": [int(v) for v in bytes_sent_per_node],
                    "backend": backend, "device": device, "wall_s": wall_s})
    if spec.deadline_bound:
        summary["deadline_s"] = config.algorithm.deadline_s
    summary.update(extra)
    return summary
