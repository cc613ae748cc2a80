"""`qtd export RUN_DIR [--node K] [--iteration N] [-o FILE]`: a model file from a run's checkpoints.

Writes the ``state_dict`` of the network-average model (or of node K's model) at the newest complete
checkpoint (or iteration N), buffers included, loadable with
``module.load_state_dict(torch.load(FILE, weights_only=True))``. A simulator run has no checkpoints; its
final models (``sim_models.pt``) are used instead. Parameter-server replicas are identical: node 0's is taken.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError


def _checkpoint_states(run: Path, nodes: int, node: int | None, iteration: int | None) -> tuple[int, dict]:
    """(iteration, {node: (params, buffers)}) from the run's checkpoint files."""
    from ..metrics import load_node_checkpoint
    from ..metrics.layout import ITER_DIR, checkpoint_dir, complete_iterations, node_file

    wanted = range(nodes) if node is None else [node]
    if node is None:
        available = complete_iterations(run, nodes)
    else:
        root = checkpoint_dir(run)
        found = (int(m.group(1)) for e in root.iterdir() if (m := ITER_DIR.match(e.name))) if root.is_dir() else ()
        available = sorted(i for i in found if node_file(run, i, node).is_file())
    if not available:
        what = "every node's" if node is None else f"node {node}'s"
        raise CheckpointError(f"{str(run)!r} holds no checkpoint with {what} file (and no sim_models.pt): export "
                              "needs a run that wrote checkpoints (every real run writes one at its end)")
    if iteration is None:
        iteration = available[-1]
    elif iteration not in available:
        raise ConfigError(f"--iteration {iteration}: no complete checkpoint there; available: "
                          + ", ".join(map(str, available)))
    states = {}
    for rank in wanted:
        state = load_node_checkpoint(node_file(run, iteration, rank), rank)
        states[rank] = (state.get("params"), state.get("buffers", {}))
    return iteration, states


def _sim_states(run: Path, node: int | None) -> dict:
    import torch

    saved = torch.load(run / "sim_models.pt", map_location="cpu", weights_only=True)
    params = saved["params"]
    wanted = range(params.shape[0]) if node is None else [node]
    return {rank: (params[rank], {}) for rank in wanted}


def _module_state(template: Any, params: Any, buffers: dict, source: str) -> dict:
    """``template``'s state_dict with these flat parameters and buffers."""
    import torch

    from ..models import FlatModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the BatchNorm notice is about training, not about exporting
        flat = FlatModel(copy.deepcopy(template))
    if not isinstance(params, torch.Tensor) or params.shape != flat.params.shape:
        size = f"{params.numel()} parameters" if isinstance(params, torch.Tensor) else "no model"
        raise CheckpointError(f"{source} holds {size} but the run's config.yaml builds a model with "
                              f"{flat.numel}: the run directory mixes files of different runs")
    with torch.no_grad():
        flat.params.copy_(params)
        own = dict(flat.module.named_buffers())
        for name, value in buffers.items():
            if name in own:
                own[name].copy_(value)
    return {key: value.detach().cpu().clone() for key, value in flat.module.state_dict().items()}


def export_command(run_dir: str, node: int | None = None, iteration: int | None = None,
                   out: str | None = None) -> int:
    from ..algorithms import Runner, spec_for
    from ..config import load_config

    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"{run_dir!r} is not a qtd run directory (no config.yaml there): give the run.out_dir "
                          "of a run")
    config = load_config(run / "config.yaml")
    nodes = config.topology.nodes
    if node is not None and not 0 <= node < nodes:
        raise ConfigError(f"--node {node} is not a node of this {nodes}-node run: use 0..{nodes - 1}")
    spec = spec_for(config.mode, config.algorithm.name)
    replicated = spec.runner is Runner.PS
    if node is None and replicated:
        node = 0  # identical replicas: averaging would only add rounding
    from ..engine.problem import build_problem
    from ..metrics.model_file import MODEL_FILE, average_states, write_model_file

    has_checkpoints = (run / "checkpoints").is_dir()
    if not has_checkpoints and (run / "sim_models.pt").is_file():
        iteration, states = None, _sim_states(run, node)
        source = f"{run / 'sim_models.pt'}"
    else:
        iteration, states = _checkpoint_states(run, nodes, node, iteration)
        source = f"the checkpoint of iteration {iteration}"
    template = build_problem(config).template
    modules = [_module_state(template, params, buffers, source) for params, buffers in states.values()]
    state = modules[0] if len(modules) == 1 else average_states(modules)
    default = MODEL_FILE if node is None or replicated else f"model_node_{node:03d}.pt"
    path = write_model_file(state, out or run / default)
    what = f"node {node}'s model" if len(modules) == 1 else f"the average of {len(modules)} nodes' models"
    at = f"at iteration {iteration}" if iteration is not None else "at the end of the simulation"
    print(f"wrote {path}: {what} {at} ({sum(v.numel() for v in state.values())} values)")
    return 0
