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
from ..data import ArrayDataset, DatasetSplits, NodeSampler, load_dataset, partition
from ..models import FlatModel, build_model


@dataclass
class Problem:
    splits: DatasetSplits
    parts: list[Tensor]  # each node's indices into splits.train
    eval_set: ArrayDataset
    eval_indices: Tensor  # indices into eval_set used for evaluation
    template: nn.Module  # the initial model, identical on every node (seeded by run.seed)

    def node_sampler(self, node: int, seed: int) -> NodeSampler:
        return NodeSampler(self.splits.train, self.parts[node], seed=seed * 1_000_003 + node)

    def new_flat_model(self, device: torch.device) -> FlatModel:
        return FlatModel(copy.deepcopy(self.template).to(device))


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
    if config.data.eval_samples and config.data.eval_samples < len(eval_indices):
        eval_indices = eval_indices[: config.data.eval_samples]
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
