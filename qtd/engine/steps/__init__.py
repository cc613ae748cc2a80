"""One step object per way of running (:class:`qtd.algorithms.Runner`), built from a node's parts.

Adding an algorithm that runs like an existing one needs no change here: its spec says everything.
"""

from __future__ import annotations

from typing import Callable

from ...algorithms import Runner
from ...comm import AsyncNeighbourChannel
from ...compress import message_nbytes
from ...compress.message_codec import difference_codec
from ..cadence import IterationCadence, TrainingTimeCadence
from .allreduce import AllReduceStep
from .async_ import AsyncDSGDStep
from .base import GradientSource, Step, StepStats, node_scalars, stats_from
from .choco import DifferenceGossipStep
from .gossip import GossipStep
from .ps import PSStep, build_codec


def _gossip(parts) -> GossipStep:
    algo, config = parts.config.algorithm, parts.config
    deadline = algo.first_deadline_s if parts.spec.deadline_bound else None
    return GossipStep(parts.world, parts.spec, parts.flat, parts.gradients(algo.batch_size, deadline,
                                                                            algo.micro_batch_size),
                      parts.views, config.compression.bits, parts.sizes, algo.overlap, config.run.seed, parts.link,
                      parts.local, config.compression.block_size)


def _difference_gossip(parts) -> DifferenceGossipStep:
    algo, config, compression = parts.config.algorithm, parts.config, parts.config.compression
    deadline = algo.first_deadline_s if parts.spec.deadline_bound else None
    codec = difference_codec(compression.differences, parts.flat.params, compression.bits, compression.k_ratio,
                             config.run.seed, compression.block_size)
    return DifferenceGossipStep(parts.world, parts.spec, parts.flat,
                                parts.gradients(algo.batch_size, deadline, algo.micro_batch_size), parts.views,
                                codec, parts.sizes, algo.overlap, parts.link, parts.local)


def _collective(parts) -> AllReduceStep:
    algo = parts.config.algorithm
    return AllReduceStep(parts.world, parts.spec, parts.flat,
                         parts.gradients(algo.batch_size, None, algo.micro_batch_size), parts.sizes, parts.link,
                         parts.local)


def _async(parts) -> AsyncDSGDStep:
    """Collective (the channel creates its gloo group): every node builds its step at the same time."""
    config, algo = parts.config, parts.config.algorithm
    channel = AsyncNeighbourChannel(parts.world, parts.view.neighbours,
                                    message_nbytes(parts.flat.numel, config.compression.bits,
                                                   config.compression.block_size), algo.max_in_flight,
                                    parts.link, config.comm.timeout_s)
    return AsyncDSGDStep(parts.world, parts.spec, parts.flat,
                         parts.gradients(algo.batch_size, None, algo.micro_batch_size), parts.view,
                         config.compression.bits, parts.sizes, config.run.seed, channel, parts.local,
                         config.compression.block_size)


def _ps(parts) -> PSStep:
    ps = parts.config.ps
    return PSStep(parts.world, parts.flat, parts.gradients(ps.batch_size, None, ps.batch_size),
                  build_codec(ps, parts.flat), ps, len(parts.problem.splits.train))


# runner -> (step builder, cadence class)
RUNNERS: dict[Runner, tuple[Callable, type]] = {
    Runner.GOSSIP: (_gossip, IterationCadence),
    Runner.DIFFERENCE_GOSSIP: (_difference_gossip, IterationCadence),
    Runner.COLLECTIVE: (_collective, IterationCadence),
    Runner.ASYNC: (_async, TrainingTimeCadence),
    Runner.PS: (_ps, IterationCadence),
}



def build_step(parts) -> Step:
    """The step object of ``parts.spec``'s runner (collective for asynchronous runs: see ``_async``)."""
    return RUNNERS[parts.spec.runner][0](parts)


__all__ = ["build_step", "AllReduceStep", "AsyncDSGDStep", "DifferenceGossipStep", "GossipStep", "GradientSource", "PSStep", "RUNNERS", "Step",
           "StepStats", "node_scalars", "stats_from"]
