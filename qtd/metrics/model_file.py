"""``model.pt``: the ``state_dict`` of the network-average model, buffers included, written when a run ends.

It loads into the user's own module with ``module.load_state_dict(torch.load(path, weights_only=True))``.
Here: averaging state dicts a process already holds (the simulator, ``qtd export``) and writing the file;
real runs and the library wrapper average over the process group (:mod:`qtd.engine.model_file`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import Tensor

MODEL_FILE = "model.pt"


def mean_of_sum(total: Tensor, like: Tensor, n: int) -> Tensor:
    """A floating entry's mean (summed in float64) in its own dtype; integers (step counters) floor-averaged."""
    if like.is_floating_point():
        return (total / n).to(like.dtype)
    return torch.div(total, n, rounding_mode="floor").to(like.dtype)


def average_states(states: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """The entry-wise mean of several nodes' state dicts (same keys), on the CPU; booleans from the first."""
    first = states[0]
    average: dict[str, Tensor] = {}
    for key, value in first.items():
        if value.dtype == torch.bool:
            average[key] = value.detach().cpu().clone()
            continue
        wide = torch.float64 if value.is_floating_point() else torch.int64
        total = sum(state[key].detach().cpu().to(wide) for state in states)
        average[key] = mean_of_sum(total, value, len(states))
    return average


def write_model_file(state: Mapping[str, Tensor], path: str | Path) -> Path:
    """Write ``state`` atomically (a temporary file, then a rename) as a plain dict of tensors."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(dict(state), tmp)
    os.replace(tmp, path)
    return path
