"""A single-process reference for the synchronous algorithms, built from the same pure functions.

It is deliberately naive (a loop over nodes): tests compare the real multi-process engine against it.
"""

from __future__ import annotations

import torch

from qtd.algorithms import Runner, StepSizes, get_spec, scheduled_lr
from qtd.compress import decode_message, encode_message
from qtd.compress.message_codec import difference_codec
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
    sizes = spec.step_sizes(algo.schedule, algo.alpha, algo.eps, config.run.iterations, algo.gamma)
    bits = config.compression.bits
    momentum = [torch.zeros(f.numel) for f in flats]  # the local optimizer, written out as torch.optim.SGD's
    # difference gossip: copies[i][j] is node i's copy of node j's public model, for j = i and every neighbour
    # (CHOCO-SGD as its paper writes it; qtd keeps only x̂_i and the weighted sum of the neighbours' copies)
    copies = [{j: torch.zeros(f.numel) for j in (i, *topology.view(i).neighbours)} for i, f in enumerate(flats)]

    def direction(i: int, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        d = grad + algo.weight_decay * x
        if algo.momentum:
            momentum[i] = algo.momentum * momentum[i] + d
            d = d + algo.momentum * momentum[i] if algo.nesterov else momentum[i]
        return d

    for t in range(iterations):
        sizes_t = StepSizes(scheduled_lr(sizes.alpha, t, algo.warmup_steps, algo.lr_decay, algo.decay_every,
                                         algo.decay_gamma, config.run.iterations), sizes.eps, sizes.gamma)
        if spec.runner is Runner.DIFFERENCE_GOSSIP:
            _gradients(config, flats, steps, samples, t)
            _choco_iteration(config, topology, flats, copies, t, sizes_t,
                             [direction(i, flats[i].grads, flats[i].params.detach()) for i in range(n)])
            continue
        messages = [encode_message(flats[i].params.detach(), bits, i, t, seed=seed,
                                   block_size=config.compression.block_size) for i in range(n)]
        _gradients(config, flats, steps, samples, t)
        if spec.runner is Runner.COLLECTIVE:
            mean_grad = torch.stack([f.grads for f in flats]).mean(dim=0)
            new = [spec.update(f.params.detach(), None, None, direction(i, mean_grad, f.params.detach()), sizes_t)
                   for i, f in enumerate(flats)]
        else:
            new = []
            for i in range(n):
                view = topology.view(i, t)
                mixed = torch.zeros(flats[i].numel)
                for j, w in zip(view.neighbours, view.neighbour_weights):
                    mixed.add_(decode_message(messages[j])[1], alpha=w)
                x = flats[i].params.detach()
                new.append(spec.update(x, mixed, view.self_weight, direction(i, flats[i].grads, x), sizes_t))
        with torch.no_grad():
            for f, x in zip(flats, new):
                f.params.copy_(x)
    return [f.params.detach().clone() for f in flats]


def _gradients(config: Config, flats, steps, samples: list[list[int]] | None, t: int) -> None:
    """Every node's mean gradient of iteration t into its flat model's grads: algorithm.batch_size samples,
    or ``samples[i][t]`` in micro-batches of algorithm.micro_batch_size (deadline runs)."""
    algo = config.algorithm
    for i, flat in enumerate(flats):
        flat.grads.zero_()
        count = samples[i][t] if samples is not None else algo.batch_size
        done = 0
        while done < count:
            k = min(algo.micro_batch_size if samples is not None else count, count - done)
            steps[i](k)
            done += k
        if count:
            flat.grads.div_(count)


def _choco_iteration(config: Config, topology, flats, copies, t: int, sizes: StepSizes, directions) -> None:
    """One CHOCO-SGD iteration of every node, written out: with algorithm.overlap the difference of the current
    model is sent and x_i <- x_i - alpha d_i + gamma sum_j w_ij (x̂_j - x̂_i); without it, the paper's order
    (x_i - alpha d_i first, its difference sent, then the consensus step)."""
    n, bits, seed, overlap = len(flats), config.compression.bits, config.run.seed, config.algorithm.overlap
    x = [f.params.detach().clone() for f in flats]
    if not overlap:
        x = [x[i] - sizes.alpha * directions[i] for i in range(n)]
    compression = config.compression
    codec = difference_codec(compression.differences, x[0], bits, compression.k_ratio, seed,
                             compression.block_size)  # grid: encode_message
    q = []
    for i in range(n):
        message = torch.empty(codec.message_nbytes, dtype=torch.uint8)
        codec.encode(x[i] - copies[i][i], i, t, out=message)
        q.append(codec.decode(message, i, t, out=torch.empty(flats[i].numel)))
    for i in range(n):
        for j in copies[i]:
            copies[i][j] += q[j]
    for i in range(n):
        view = topology.view(i)
        consensus = sum(w * (copies[i][j] - copies[i][i]) for j, w in zip(view.neighbours, view.neighbour_weights))
        step = sizes.alpha * directions[i] if overlap else 0.0
        with torch.no_grad():
            flats[i].params.copy_(x[i] - step + sizes.gamma * consensus)
