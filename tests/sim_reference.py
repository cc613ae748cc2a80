"""A naive single-process asynchronous DSGD, written from the time model in the README's "Simulating"
section, to check the simulator's events.

Node j's k-th step ends at sum_{k' <= k} (B / V_{j,k'} + T_c * s/16); steps are taken in order of end time
(ties: lower node id); at its step a node computes a batch-B gradient at its model, applies the DSGD rule
with the newest model it holds from each neighbour, and its new model (as decoded from its message) is what
its neighbours hold from then on. Deliberately plain: lists, a sort, a loop over neighbours.
"""

from __future__ import annotations

import torch

from qtd.algorithms import StepSizes, get_spec, scheduled_lr
from qtd.compress import decode_message, encode_message
from qtd.config import Config
from qtd.deadline import SpeedModel

from tests.reference import reference_nodes


def expected_events(config: Config, steps: int) -> list[tuple[float, int]]:
    """The first ``steps`` (end time, node) events in processing order, from the speeds alone."""
    n, algo, emu = config.topology.nodes, config.algorithm, config.emulation
    speeds = SpeedModel(emu.speed_distribution, emu.speed_low, emu.speed_high, emu.speeds, config.run.seed)
    comm = emu.link_latency_s + emu.comm_time_s * config.compression.bits / 16
    events = []
    for j in range(n):
        end = 0.0
        for k in range(steps):  # more than enough candidates per node
            compute = algo.batch_size / speeds.speed(j, k)
            end += max(compute, comm) if algo.overlap else compute + comm
            events.append((end, j))
    events.sort()
    return events[:steps]


def reference_async_models(config: Config, events: list[tuple[float, int]]) -> list[torch.Tensor]:
    n, seed, bits = config.topology.nodes, config.run.seed, config.compression.bits
    topology, flats, steps = reference_nodes(config)
    algo, spec = config.algorithm, get_spec(config.algorithm.name)
    sizes = spec.step_sizes(algo.schedule, algo.alpha, algo.eps, config.run.iterations)
    held = [f.params.detach().clone() for f in flats]
    done = [0] * n
    momentum = [torch.zeros(f.numel) for f in flats]  # the local optimizer, written out as torch.optim.SGD's
    batch = config.algorithm.batch_size
    for _, j in events:
        flat = flats[j]
        flat.zero_grad()
        steps[j](batch)
        flat.grads.div_(batch)
        view = topology.view(j)
        mixed = torch.zeros(flat.numel)
        for neighbour, weight in zip(view.neighbours, view.neighbour_weights):
            mixed.add_(held[neighbour], alpha=weight)
        x = flat.params.detach()
        d = flat.grads + algo.weight_decay * x
        if algo.momentum:
            momentum[j] = algo.momentum * momentum[j] + d
            d = d + algo.momentum * momentum[j] if algo.nesterov else momentum[j]
        alpha = scheduled_lr(sizes.alpha, done[j], algo.warmup_steps, algo.lr_decay, algo.decay_every,
                             algo.decay_gamma, config.run.iterations)  # a node's schedule counts its own steps
        with torch.no_grad():
            flat.params.copy_(spec.update(x, mixed, view.self_weight, d, StepSizes(alpha, sizes.eps)))
        # the message of model version done[j] + 1: a real node numbers (and keys) its models from 1
        held[j] = decode_message(encode_message(flat.params.detach(), bits, j, done[j] + 1, seed=seed))[1]
        done[j] += 1
    return [f.params.detach().clone() for f in flats]
