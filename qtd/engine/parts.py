"""What every node of a real run is built from, in one place: the problem, its model and sampler, the
emulated speeds and links, and the seeds. Step builders (:mod:`.steps`) take what they need from it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import torch

from ..algorithms import AlgorithmSpec, LocalSGD, StepSizes
from ..comm import LinkModel, World
from ..config import Config
from ..data import NodeSampler
from ..deadline import SpeedModel
from ..deadline.auto import AutoDeadline
from ..models import FlatModel
from ..topology import NodeView, build_topology
from .problem import Problem, build_problem, make_gradient_step, module_seed
from .steps.base import GradientSource


@dataclass
class NodeParts:
    config: Config
    world: World
    spec: AlgorithmSpec
    problem: Problem
    flat: FlatModel
    sampler: NodeSampler

    @cached_property
    def view(self) -> NodeView:
        """This node's neighbours and mixing weights (of the first iteration, for a time-varying topology)."""
        return self.views[0]

    @cached_property
    def views(self) -> tuple[NodeView, ...]:
        """This node's neighbours and mixing weights in each iteration of the topology's period."""
        return build_topology(self.config.topology).views(self.world.rank)

    @property
    def sizes(self) -> StepSizes:
        algo = self.config.algorithm
        return self.spec.step_sizes(algo.schedule, algo.alpha, algo.eps, self.config.run.iterations,
                                     algo.gamma)

    @property
    def local(self) -> LocalSGD:
        """The local optimizer (momentum, weight decay, learning-rate schedule) over the run's iterations."""
        return self.config.algorithm.local_sgd(self.config.run.iterations)

    @property
    def link(self) -> LinkModel | None:
        emulation = self.config.emulation
        return LinkModel.from_emulation(emulation, self.flat.numel) if emulation.links else None

    def speed_of(self) -> Callable[[int], float | None]:
        emulation = self.config.emulation
        if not emulation.stragglers:
            return lambda iteration: None
        model, rank = SpeedModel.from_config(emulation, self.config.run.seed), self.world.rank
        return lambda iteration: model.speed(rank, iteration)

    def gradients(self, batch_size: int, deadline_s: float | None, micro_batch_size: int) -> GradientSource:
        step = make_gradient_step(self.flat, self.sampler, self.world.device)
        algo = self.config.algorithm
        auto = (AutoDeadline(algo.deadline_start_s, algo.overlap, self.world.size)
                if deadline_s is not None and algo.auto_deadline else None)
        return GradientSource(self.flat, step, self.world.device, self.speed_of(), batch_size,
                              auto.deadline_s if auto else deadline_s, micro_batch_size, auto)


def build_parts(config: Config, world: World, spec: AlgorithmSpec) -> NodeParts:
    problem = build_problem(config)
    flat = problem.new_flat_model(world.device)
    sampler = problem.node_sampler(world.rank, config.run.seed)
    torch.manual_seed(module_seed(config.run.seed, world.rank))  # dropout and other module randomness
    return NodeParts(config, world, spec, problem, flat, sampler)
