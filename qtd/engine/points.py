"""What every run, real or simulated, records at an evaluation point; no network here.

:class:`EvalPoint` is one row of ``metrics.jsonl`` (the keys of the README's "What a run writes" first, then the run kind's
own columns) and its TensorBoard tags (:func:`eval_scalars`); the real engine (:mod:`.evaluate`) and the
simulator both build their rows with it, and evaluate a model with :func:`evaluate_sum`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import ArrayDataset


@dataclass(frozen=True)
class EvalPoint:
    iteration: int
    time_s: float
    eval_loss: float
    eval_accuracy: float
    consensus_error: float
    bytes_sent: int  # algorithm traffic of all nodes so far, headers included
    eval_bytes: int  # evaluation traffic of all nodes so far
    columns: Mapping[str, Any] = field(default_factory=dict)  # the run kind's own metrics.jsonl columns
    over_budget: bool = False  # some node's training time passed run.time_budget_s
    all_finished: bool = False  # asynchronous runs: every node has stopped

    def row(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "time_s": self.time_s, "eval_loss": self.eval_loss,
                "eval_accuracy": self.eval_accuracy, "consensus_error": self.consensus_error,
                "bytes_sent": self.bytes_sent, "eval_bytes": self.eval_bytes, **self.columns}


def eval_scalars(point: EvalPoint, time_tag: str = "time/train_s") -> dict[str, float]:
    """The TensorBoard tags of an evaluation (global run); the simulator's time tag is ``time/virtual_s``.
    With ``deadline_s: auto`` the agreed T_d is ``train/deadline_s``."""
    scalars = {"eval/loss": point.eval_loss, "eval/accuracy": point.eval_accuracy,
               "eval/consensus_error": point.consensus_error, "comm/bytes_sent_total": point.bytes_sent,
               time_tag: point.time_s}
    if "deadline_s" in point.columns:
        scalars["train/deadline_s"] = point.columns["deadline_s"]
    return scalars


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN: a diverged run's losses are written as null."""
    return value if value is not None and math.isfinite(value) else None


@torch.no_grad()
def evaluate_sum(module: nn.Module, dataset: ArrayDataset, indices: Tensor, device: torch.device,
                 batch_size: int = 1000) -> tuple[float, float, int]:
    """(summed loss, correct predictions, samples) of ``module`` on ``dataset[indices]``."""
    was_training = module.training
    module.eval()
    loss_sum, correct = 0.0, 0.0
    for start in range(0, len(indices), batch_size):
        x, y = dataset.batch(indices[start:start + batch_size])
        x, y = x.to(device), y.to(device)
        logits = module(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += float((logits.argmax(dim=1) == y).sum())
    module.train(was_training)
    return loss_sum, correct, len(indices)


def point_from_table(table: Mapping[str, np.ndarray], iteration: int, time_s: float,
                     columns: Mapping[str, Any]) -> EvalPoint:
    """The evaluation point of the gathered per-node table (every node computes the same one)."""
    n_eval = max(float(table["count"].sum()), 1.0)
    return EvalPoint(iteration=iteration, time_s=time_s, eval_loss=float(table["loss_sum"].sum()) / n_eval,
                     eval_accuracy=float(table["correct"].sum()) / n_eval,
                     consensus_error=float(table["deviation"].mean()), bytes_sent=int(table["bytes_sent"].sum()),
                     eval_bytes=int(table["eval_bytes"].sum()), columns=dict(columns),
                     over_budget=bool(table["over_budget"].max() > 0), all_finished=bool(table["finished"].min() > 0))
