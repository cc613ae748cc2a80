"""Gradients of many nodes' models at once, for the simulator.

Each node i holds a model x_i (one row of an (n, p) stack), its own data sampler, and needs the mean
gradient of the loss over ``counts[i]`` fresh local samples (zero when it computed none). Two ways, same
samples and same maths as a real node (:func:`qtd.engine.problem.make_gradient_step`):

- :class:`StackedGradients`: one batched functional forward/backward over the stack of models
  (``torch.func.vmap`` of ``grad``), the nodes' batches padded to the longest and masked. The gradient of
  the summed loss over a node's samples equals the sum of its micro-batch gradients, and a sampler draws
  the same samples whether asked for k1 then k2 or for k1 + k2, so this gives what a node's micro-batch
  loop gives, up to float rounding.
- :class:`LoopGradients`: one real module per node, run micro-batch by micro-batch exactly as the real
  engine does. Used for models whose forward pass depends on the batch or on random numbers (BatchNorm,
  Dropout) or that ``vmap`` cannot batch, and by the asynchronous simulation, which steps one node at a time.
"""

from __future__ import annotations

import copy
import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import ArrayDataset, NodeSampler
from ..models import FlatModel
from ..deadline.auto import noise_terms
from ..engine.problem import make_gradient_step

# Padded inputs of one vmap call stay under about this many float32 values; larger jobs go in node chunks.
MAX_BATCH_VALUES = 1 << 24

_BATCH_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                    nn.AlphaDropout)


def micro_batches(count: int, micro_batch_size: int) -> list[int]:
    """The micro-batch sizes of a deadline-bound node that computes ``count`` samples (last one partial)."""
    full, rest = divmod(count, micro_batch_size)
    return [micro_batch_size] * full + ([rest] if rest else [])


def _vmap_safe(module: nn.Module) -> bool:
    return not any(isinstance(m, _BATCH_DEPENDENT) for m in module.modules())


class LoopGradients:
    """Node by node, micro-batch by micro-batch, with the real engine's gradient step."""

    def __init__(self, template: nn.Module, samplers: Sequence[NodeSampler], device: torch.device) -> None:
        self.flats = [FlatModel(copy.deepcopy(template).to(device)) for _ in samplers]
        self.steps = [make_gradient_step(flat, sampler, device) for flat, sampler in zip(self.flats, samplers)]

    def node(self, i: int, x: Tensor, batches: Sequence[int]) -> tuple[Tensor, float]:
        """Node i's mean gradient at model ``x`` over micro-batches of the given sizes, and its summed loss."""
        flat = self.flats[i]
        with torch.no_grad():
            flat.params.copy_(x)
        flat.zero_grad()
        loss_sum, samples = 0.0, 0
        for k in batches:
            loss_sum += self.steps[i](k)
            samples += k
        if samples:
            flat.grads.div_(samples)
        return flat.grads, loss_sum

    def halves(self, models: Tensor, counts: Sequence[int], micro_batch_size: int
               ) -> tuple[Tensor, Tensor, list[tuple[float, float] | None]]:
        """As :meth:`__call__`, with each node's noise estimate (see :meth:`StackedGradients.halves`)."""
        grads = torch.zeros_like(models)
        losses = torch.zeros(len(counts), dtype=torch.float64)
        noise: list[tuple[float, float] | None] = []
        for i, count in enumerate(counts):
            total, half = grads[i], torch.zeros_like(models[i])
            group_a, group_b = split_groups(count, micro_batch_size)
            in_a = set(group_a)
            for start, size in _micro_batch_spans(count, micro_batch_size):
                first = (size + 1) // 2 if start == 0 else size  # the first micro-batch runs in two halves
                for offset, part in ((0, first), (first, size - first)):
                    if not part:
                        continue
                    grad, loss_sum = self.node(i, models[i], [part])  # the mean over these samples
                    total.add_(grad, alpha=part)
                    if start + offset in in_a:
                        half.add_(grad, alpha=part)
                    losses[i] += loss_sum
            noise.append(noise_terms(float(half.double().square().sum()), len(group_a),
                                     float((total - half).double().square().sum()), len(group_b),
                                     float(total.double().square().sum())))
            if count:
                total.div_(count)
        return grads, losses, noise

    def __call__(self, models: Tensor, counts: Sequence[int], micro_batch_size: int | None) -> tuple[Tensor, Tensor]:
        grads = torch.empty_like(models)
        losses = torch.zeros(len(counts), dtype=torch.float64)
        for i, count in enumerate(counts):
            batches = micro_batches(count, micro_batch_size) if micro_batch_size else ([count] if count else [])
            grad, losses[i] = self.node(i, models[i], batches)
            grads[i].copy_(grad)
        return grads, losses


class StackedGradients:
    """All nodes' gradients in one ``vmap``-ed functional forward/backward (see the module docstring)."""

    def __init__(self, template: nn.Module, dataset: ArrayDataset, samplers: Sequence[NodeSampler],
                 device: torch.device) -> None:
        from torch.func import functional_call, grad_and_value, vmap

        self.module = copy.deepcopy(template).to(device)
        self.dataset, self.samplers, self.device = dataset, samplers, device
        flat = FlatModel(copy.deepcopy(template).to(device))
        shapes = dict(flat.module.named_parameters())
        self.layout = [(name, offset, size, tuple(shapes[name].shape)) for name, offset, size in flat.named_slices()]
        self.numel = flat.numel
        module = self.module

        def summed_loss(params: dict[str, Tensor], x: Tensor, y: Tensor, weight: Tensor) -> Tensor:
            logits = functional_call(module, params, (x,))
            return (F.cross_entropy(logits, y, reduction="none") * weight).sum()

        self._grad = vmap(grad_and_value(summed_loss))

    @staticmethod
    def supports(template: nn.Module) -> bool:
        return _vmap_safe(template)

    def _params(self, models: Tensor) -> dict[str, Tensor]:
        n = models.shape[0]
        return {name: models[:, offset:offset + size].view(n, *shape) for name, offset, size, shape in self.layout}

    def _chunk(self, models: Tensor, idx: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
        n, width = idx.shape
        x, y = self.dataset.batch(idx.reshape(-1))
        x = x.to(self.device).view(n, width, *x.shape[1:])
        y = y.to(self.device).view(n, width)
        grads, losses = self._grad(self._params(models), x, y, weight)
        flat = torch.cat([grads[name].reshape(n, -1) for name, _, _, _ in self.layout], dim=1)
        return flat, losses

    def __call__(self, models: Tensor, counts: Sequence[int], micro_batch_size: int | None = None
                 ) -> tuple[Tensor, Tensor]:
        """Mean gradients (n, p) at ``models`` over ``counts[i]`` fresh samples of node i, and summed losses (n,).

        ``micro_batch_size`` is accepted for symmetry with :class:`LoopGradients`: batching does not change
        the gradient of an MLP-like model, only how the samples are grouped.
        """
        drawn = [self.samplers[i].next_indices(count) if count else None for i, count in enumerate(counts)]
        grads, losses = self._sums(models, drawn)
        return grads.mul_(_inverse_counts(counts, models).unsqueeze(1)), losses

    def halves(self, models: Tensor, counts: Sequence[int], micro_batch_size: int
               ) -> tuple[Tensor, Tensor, list[tuple[float, float] | None]]:
        """As :meth:`__call__`, and each node's gradient-noise estimate from its two interleaved halves of
        micro-batches (:func:`split_groups`), as a real node with ``deadline_s: auto`` takes it."""
        rows: list[Tensor | None] = []
        for i, count in enumerate(counts):
            drawn = self.samplers[i].next_indices(count) if count else None
            for positions in split_groups(count, micro_batch_size):
                rows.append(drawn[positions] if positions else None)
        sums, losses = self._sums(models.repeat_interleave(2, dim=0), rows)
        sums, losses = sums.view(len(counts), 2, -1), losses.view(len(counts), 2).sum(dim=1)
        grads = sums.sum(dim=1)
        halves_sq = sums.double().square().sum(dim=2).tolist()  # (n, 2): |S_A|^2, |S_B|^2 of every node
        totals_sq = grads.double().square().sum(dim=1).tolist()
        noise = []
        for (sq_a, sq_b), sq_total, count in zip(halves_sq, totals_sq, counts):
            group_a, group_b = split_groups(count, micro_batch_size)
            noise.append(noise_terms(sq_a, len(group_a), sq_b, len(group_b), sq_total))
        return grads.mul_(_inverse_counts(counts, models).unsqueeze(1)), losses, noise

    def _sums(self, models: Tensor, drawn: Sequence[Tensor | None]) -> tuple[Tensor, Tensor]:
        """Summed gradients (r, p) of row r's model over its samples ``drawn[r]`` (None: none), summed losses."""
        n = models.shape[0]
        grads = torch.zeros_like(models)
        losses = torch.zeros(n, dtype=torch.float64)
        width = max((len(d) for d in drawn if d is not None), default=0)
        if width == 0:
            return grads, losses
        idx = torch.zeros(n, width, dtype=torch.int64)
        weight = torch.zeros(n, width, dtype=models.dtype)
        for i, rows in enumerate(drawn):
            if rows is not None and len(rows):
                idx[i, :len(rows)] = rows
                weight[i, :len(rows)] = 1.0
        sample_values = max(1, self.dataset.x[0].numel())
        chunk = max(1, MAX_BATCH_VALUES // (width * sample_values))
        weight = weight.to(self.device)
        with torch.no_grad():
            for start in range(0, n, chunk):
                rows = slice(start, min(n, start + chunk))
                if not any(d is not None and len(d) for d in drawn[rows]):
                    continue
                g, loss = self._chunk(models[rows].detach(), idx[rows], weight[rows])
                grads[rows] = g
                losses[rows] = loss.double().cpu()
        return grads, losses


def split_groups(count: int, micro_batch_size: int) -> tuple[list[int], list[int]]:
    """The sample positions of the two groups of the noise estimate of a node computing ``count`` samples, as
    the real engine forms them (:class:`qtd.engine.steps.base.GradientSource`): the first micro-batch in two
    halves (A the first ceil(k/2) samples, B the rest), each later one whole to the group with fewer samples
    so far (A on a tie)."""
    groups: tuple[list[int], list[int]] = ([], [])
    for k, (start, size) in enumerate(_micro_batch_spans(count, micro_batch_size)):
        if k == 0:
            first = (size + 1) // 2
            groups[0].extend(range(start, start + first))
            groups[1].extend(range(start + first, start + size))
        else:
            groups[0 if len(groups[0]) <= len(groups[1]) else 1].extend(range(start, start + size))
    return groups


def _micro_batch_spans(count: int, micro_batch_size: int) -> list[tuple[int, int]]:
    spans, start = [], 0
    for size in micro_batches(count, micro_batch_size):
        spans.append((start, size))
        start += size
    return spans


def _inverse_counts(counts: Sequence[int], like: Tensor) -> Tensor:
    return torch.tensor([1.0 / c if c else 0.0 for c in counts], dtype=like.dtype, device=like.device)


def build_gradients(template: nn.Module, dataset: ArrayDataset, samplers: Sequence[NodeSampler],
                    device: torch.device, mode: str = "auto") -> StackedGradients | LoopGradients:
    """``auto``: the batched path when the model allows it (checked by a dry run), else node by node."""
    if mode == "loop":
        return LoopGradients(template, samplers, device)
    if mode not in ("auto", "vmap"):
        raise ValueError(f"gradient mode {mode!r}: choose auto, vmap or loop")
    if not StackedGradients.supports(template):
        if mode == "vmap":
            raise ValueError(f"{type(template).__name__} has BatchNorm or Dropout layers: use the loop path")
        return LoopGradients(template, samplers, device)
    stacked = StackedGradients(template, dataset, samplers, device)
    if mode == "auto":
        try:  # a dry run on throw-away samplers' data: some models use operations vmap cannot batch
            probe = torch.zeros(2, stacked.numel, device=device)
            x, y = dataset.batch(torch.zeros(2, dtype=torch.int64))
            stacked._grad(stacked._params(probe), x.to(device).unsqueeze(1), y.to(device).unsqueeze(1),
                          torch.ones(2, 1, device=device))
        except Exception as exc:  # noqa: BLE001 - any failure means: use the safe path
            warnings.warn(f"simulating node by node: vmap cannot batch {type(template).__name__} ({exc})",
                          stacklevel=2)
            return LoopGradients(template, samplers, device)
    return stacked
