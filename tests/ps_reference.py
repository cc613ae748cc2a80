"""A single-process reference of parameter-server mode, built from the same pure functions.

Deliberately naive: one theta, the n workers' gradients computed one after the other (each with its own
sampler and its own dropout random stream, as the real workers have), each compressed with the pure
TopK / Block-Sign / error-feedback functions (no wire format), averaged by plain dense additions in
rank order, then one AMSGrad step. Tests compare real multi-process runs against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qtd.algorithms import AMSGradState, amsgrad_step, lr_at
from qtd.compress import (ErrorFeedback, blocksign_compress, blocksign_decompress, topk_compress,
                          topk_decompress)
from qtd.config import Config
from qtd.engine.problem import build_problem, make_gradient_step
from qtd.engine.problem import module_seed
from qtd.engine.steps.ps import topk_count


@dataclass
class ReferenceRun:
    theta: torch.Tensor
    state: AMSGradState
    residuals: list[torch.Tensor | None]


def reference_ps(config: Config, iterations: int) -> ReferenceRun:
    n, ps, seed = config.topology.nodes, config.ps, config.run.seed
    cpu = torch.device("cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers run one thread each: same kernels, same roundings
    rng_before = torch.get_rng_state()
    try:
        problem = build_problem(config)
        flat = problem.new_flat_model(cpu)
        samplers = [problem.node_sampler(i, seed) for i in range(n)]
        steps = [make_gradient_step(flat, samplers[i], cpu) for i in range(n)]
        rngs = []
        for i in range(n):
            torch.manual_seed(module_seed(seed, i))
            rngs.append(torch.get_rng_state())
        blocks = [size for _, _, size in flat.named_slices()]
        k = topk_count(ps.k_ratio, flat.numel)
        memories = [ErrorFeedback(flat.params) if ps.error_feedback and ps.compressor != "none" else None
                    for _ in range(n)]
        state = AMSGradState.zeros_like(flat.params)
        for _ in range(iterations):
            total = torch.zeros(flat.numel)
            for i in range(n):
                torch.set_rng_state(rngs[i])
                flat.grads.zero_()
                steps[i](ps.batch_size)
                flat.grads.div_(ps.batch_size)
                rngs[i] = torch.get_rng_state()
                g = flat.grads.clone()
                c = memories[i].compensate(g) if memories[i] is not None else g
                if ps.compressor == "topk":
                    sparse = topk_compress(c, k)
                    if ps.value_bits == 16:
                        sparse = type(sparse)(sparse.values.half().float(), sparse.indices, sparse.numel)
                    sent = topk_decompress(sparse)
                elif ps.compressor == "blocksign":
                    sent = blocksign_decompress(*blocksign_compress(c, blocks), blocks)
                else:
                    sent = c
                if memories[i] is not None:
                    memories[i].update(c, sent)
                total += sent
            total /= n
            lr = lr_at(state.step, ps.lr, ps.warmup_steps, ps.decay_every, ps.decay_gamma)
            with torch.no_grad():
                amsgrad_step(flat.params, total, state, lr, ps.beta1, ps.beta2, ps.eps)
        return ReferenceRun(flat.params.detach().clone(), state,
                            [m.residual.clone() if m is not None else None for m in memories])
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(rng_before)
