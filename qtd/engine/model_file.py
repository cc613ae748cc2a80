"""``model.pt`` of real runs and the library wrapper: the network-average model's ``state_dict``, averaged over
the process group (a collective). The file format and the averaging rule are :mod:`qtd.metrics.model_file`'s.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..comm import World, all_reduce_sum
from ..metrics.model_file import MODEL_FILE, mean_of_sum, write_model_file  # noqa: F401 (the driver's)


def network_average_state(module: nn.Module, world: World, replicated: bool = False) -> dict[str, Tensor]:
    """Collective (every rank calls it): ``module.state_dict()`` averaged over all nodes, on every rank, on the
    CPU. Floating entries are summed in float64, so the mean does not depend on the order of the sum.
    ``replicated`` (parameter-server mode): every rank holds the same model; this rank's is returned."""
    state = module.state_dict()
    if replicated or world.size == 1:
        return {key: value.detach().cpu().clone() for key, value in state.items()}
    average: dict[str, Tensor] = {key: value.detach().cpu().clone() for key, value in state.items()}
    for wide in (torch.float64, torch.int64):
        floating = wide == torch.float64
        keys = [k for k, v in state.items() if v.dtype != torch.bool and v.is_floating_point() == floating]
        if not keys:
            continue
        total = torch.cat([state[k].detach().reshape(-1).to(world.device, wide) for k in keys])
        all_reduce_sum(total, world, "averaging the nodes' models for model.pt")
        for key, piece in zip(keys, total.cpu().split([state[k].numel() for k in keys])):
            average[key] = mean_of_sum(piece, state[key], world.size).view_as(state[key])
    return average
