"""The learning problem a run solves: data, per-node partitions, the model and its loss.

Built the same way by the real engine (one node per process) and the simulator (all nodes in one
process), so both train the same model on the same local data.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config
from ..data import ArrayDataset, DatasetSplits, NodeSampler, evaluation_indices, load_dataset, partition
from ..models import FlatModel, build_model


@dataclass
class Problem:
    splits: DatasetSplits
    parts: list[Tensor]  # each node's indices into splits.train
    eval_set: ArrayDataset
    eval_indices: Tensor  # indices into eval_set used for evaluation
    template: nn.Module  # the initial model, identical on every node (seeded by run.seed)

    def node_sampler(self, node: int, seed: int) -> NodeSampler:
        """Node ``node``'s stream of local samples (the same in real runs, the simulator and the library)."""
        return NodeSampler(self.splits.train, self.parts[node], seed=seed * 1_000_003 + node)

    def new_flat_model(self, device: torch.device) -> FlatModel:
        return FlatModel(copy.deepcopy(self.template).to(device))


def module_seed(seed: int, node: int) -> int:
    """The seed of node ``node``'s module randomness (dropout and the like): one stream per node."""
    return seed * 7919 + node


def build_problem(config: Config) -> Problem:
    seed = config.run.seed
    splits = load_dataset(config.data, seed=seed)
    parts = partition(splits.train.labels, config.topology.nodes, config.data.partition,
                      samples_per_node=config.data.samples_per_node,
                      dirichlet_alpha=config.data.dirichlet_alpha, seed=seed)
    eval_set = splits.test if config.data.eval_on == "test" else splits.train
    if config.data.eval_on == "train" and config.data.samples_per_node:
        eval_indices = torch.cat(list(parts))  # the paper: the training loss over all nodes' samples
    else:
        eval_indices = torch.arange(len(eval_set))
    eval_indices = evaluation_indices(eval_indices, config.data.eval_samples, seed)
    torch.manual_seed(seed)  # every node starts from the same model
    template = build_model(config.model, splits.train.input_shape, splits.train.num_classes)
    return Problem(splits=splits, parts=parts, eval_set=eval_set, eval_indices=eval_indices, template=template)


def make_gradient_step(flat: FlatModel, sampler: NodeSampler, device: torch.device):
    """A step function for the deadline loop: k fresh local samples, summed loss, gradients accumulated."""
    module = flat.module

    def step(k: int) -> float:
        x, y = sampler.sample(k)
        loss = F.cross_entropy(module(x.to(device, non_blocking=True)), y.to(device, non_blocking=True),
                               reduction="sum")
        loss.backward()
        return float(loss.detach())

    return step
