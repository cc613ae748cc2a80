"""One round of the algorithm as the user's own loop sees it: the micro-batches of this iteration, then the
mean gradient, ready for the user's ``optimizer.step()``.

Iterating a :class:`Round` yields the user's own batches until the deadline T_d (QuanTimed-DSGD) or one
batch (the fixed-batch algorithms), through the same deadline rule as the engine
(:class:`qtd.deadline.DeadlinePhase`): a batch it predicts cannot finish before T_d is not started (it
waits for the next round), and an emulated speed V caps the samples at floor(V * T_d), cutting a batch
if need be (the rest comes first in the next round). The user backpropagates each micro-batch's ordinary
(mean) loss; when the iteration ends, the parameters' ``.grad`` hold the mean gradient over all samples
computed (zero if none). Between micro-batches of different sizes b_k and b_k+1 the accumulated gradients
are rescaled by b_k / b_k+1, and by b_last / S at the end, so that sum_k b_k g_k / S comes out of ordinary
``loss.backward()`` calls without a second gradient buffer.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ..deadline import DeadlinePhase, FixedBatchPhase, GradientResult
from .batches import BatchStream


@torch.no_grad()
def _scale_grads(params: Sequence[nn.Parameter], factor: float) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    if grads and factor != 1.0:
        torch._foreach_mul_(grads, factor)


@torch.no_grad()
def _zero_grads(params: Sequence[nn.Parameter]) -> None:
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        else:
            p.grad.zero_()


class Round:
    """Iteration :attr:`iteration` at this node. Iterate it once, to the end, for its micro-batches; then call
    ``optimizer.step()``. :meth:`finish` (called by :meth:`qtd.api.Decentralized.rounds` when the loop body
    returns) waits for the neighbours' models and applies the consensus step."""

    def __init__(self, iteration: int, phase: DeadlinePhase | FixedBatchPhase, stream: BatchStream,
                 params: Sequence[nn.Parameter], speed: float | None,
                 gradients_ready: Callable[["Round"], None], finish: Callable[["Round"], None]) -> None:
        self.iteration, self.speed = iteration, speed
        self._phase, self._stream, self._params = phase, stream, params
        self._gradients_ready, self._finish = gradients_ready, finish
        self._iterated = self.gradients_done = self.finished = False
        self._current, self._loss = 0, 0.0
        self.result: GradientResult | None = None

    @property
    def samples(self) -> int:
        """Samples computed in this round so far (their mean gradient is in ``.grad`` once iterated)."""
        return self._phase.samples

    def __iter__(self) -> Iterator[Any]:
        if self._iterated:
            raise RuntimeError(f"round {self.iteration} was already iterated: iterate each round once")
        self._iterated = True
        previous = 0
        while k := self._phase.next_size(self._stream.peek_size(), divisible=False):
            if previous and previous != k:
                _scale_grads(self._params, previous / k)
            batch = self._stream.take(k)
            self._current, self._loss = k, 0.0
            yield batch
            self._phase.done(k, self._loss)
            previous = k
        self._end_gradients(previous)

    def add_loss(self, loss: Tensor | float) -> None:
        """Optional: the mean loss of the current micro-batch, for the ``node/train_loss`` TensorBoard tag."""
        self._loss += float(loss.detach() if isinstance(loss, Tensor) else loss) * self._current

    def _end_gradients(self, last: int) -> None:
        samples = self._phase.samples
        if samples:
            _scale_grads(self._params, last / samples)
        else:
            _zero_grads(self._params)
        self.result = self._phase.result()
        self.gradients_done = True
        self._gradients_ready(self)

    def finish(self) -> None:
        """Wait for the neighbours' models and apply the consensus step (once; later calls do nothing)."""
        if not self.finished:
            self.finished = True
            self._finish(self)
