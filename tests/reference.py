"""A single-process reference for the synchronous algorithms, built from the same pure functions.

It is deliberately naive (a loop over nodes): tests compare the real multi-process engine against it.
"""

from __future__ import annotations

import torch

from qtd.algorithms import Runner, StepSizes, get_spec, scheduled_lr
from qtd.compress import decode_message, encode_message
from qtd.config import Config
from qtd.engine.problem import build_problem, make_gradient_step
from qtd.topology import build_topology


def reference_nodes(config: Config):
    """The n nodes of a single-process reference, built as real runs build them: the topology, each
    node's flat model, sampler and gradient step (on the CPU)."""
    n, seed, cpu = config.topology.nodes, config.run.seed, torch.device("cpu")
    problem = build_problem(config)
    flats = [problem.new_flat_model(cpu) for _ in range(n)]
    samplers = [problem.node_sampler(i, seed) for i in range(n)]
    steps = [make_gradient_step(flats[i], samplers[i], cpu) for i in range(n)]
    return build_topology(config.topology), flats, steps


def reference_models(config: Config, iterations: int, samples: list[list[int]] | None = None) -> list[torch.Tensor]:
    """Each node's flat model after ``iterations`` steps. ``samples[i][t]``: node i's sample count at
    iteration t (deadline runs), computed in micro-batches of algorithm.micro_batch_size. The local optimizer
    (algorithm.momentum, weight_decay, the schedule) is spelled out here, not taken from qtd."""
    n, algo, seed = config.topology.nodes, config.algorithm, config.run.seed
    topology, flats, steps = reference_nodes(config)
    spec = get_spec(algo.name)
    sizes = spec.step_sizes(algo.schedule, algo.alpha, algo.eps, config.run.iterations)
    bits = config.compression.bits
    momentum = [torch.zeros(f.numel) for f in flats]  # the local optimizer, written out as torch.optim.SGD's

    def direction(i: int, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        d = grad + algo.weight_decay * x
        if algo.momentum:
            momentum[i] = algo.momentum * momentum[i] + d
            d = d + algo.momentum * momentum[i] if algo.nesterov else momentum[i]
        return d

    for t in range(iterations):
        sizes_t = StepSizes(scheduled_lr(sizes.alpha, t, algo.warmup_steps, algo.lr_decay, algo.decay_every,
                                         algo.decay_gamma, config.run.iterations), sizes.eps)
        messages = [encode_message(flats[i].params.detach(), bits, i, t, seed=seed) for i in range(n)]
        for i in range(n):
            flats[i].grads.zero_()
            count = samples[i][t] if samples is not None else algo.batch_size
            done = 0
            while done < count:
                k = min(algo.micro_batch_size if samples is not None else count, count - done)
                steps[i](k)
                done += k
            if count:
                flats[i].grads.div_(count)
        if spec.runner is Runner.COLLECTIVE:
            mean_grad = torch.stack([f.grads for f in flats]).mean(dim=0)
            new = [spec.update(f.params.detach(), None, None, direction(i, mean_grad, f.params.detach()), sizes_t)
                   for i, f in enumerate(flats)]
        else:
            new = []
            for i in range(n):
                view = topology.view(i)
                mixed = torch.zeros(flats[i].numel)
                for j, w in zip(view.neighbours, view.neighbour_weights):
                    mixed.add_(decode_message(messages[j])[1], alpha=w)
                x = flats[i].params.detach()
                new.append(spec.update(x, mixed, view.self_weight, direction(i, flats[i].grads, x), sizes_t))
        with torch.no_grad():
            for f, x in zip(flats, new):
                f.params.copy_(x)
    return [f.params.detach().clone() for f in flats]
