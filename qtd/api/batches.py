"""The user's batches as an endless stream that can be cut: what the deadline iterator draws micro-batches from.

A batch is whatever the user's DataLoader (or any iterable) yields: a tensor, or tuples, lists and dicts of
them (the default collate), all with the samples along dimension 0. When the deadline (or an emulated
speed's cap floor(V * T_d)) leaves room for only part of a batch, the stream hands out its first k samples
and keeps the rest for the next micro-batch, so no sample is skipped and the count is exact.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from torch import Tensor

from ..errors import ConfigError


def batch_size(batch: Any) -> int:
    """The number of samples in ``batch``: the length of its first tensor."""
    tensor = _first_tensor(batch)
    if tensor is None or tensor.dim() == 0:
        raise ConfigError(f"cannot tell how many samples a batch of type {type(batch).__name__} holds: yield "
                          "tensors, or tuples, lists or dicts of tensors with the samples along dimension 0")
    return int(tensor.shape[0])


def _first_tensor(batch: Any) -> Tensor | None:
    if isinstance(batch, Tensor):
        return batch
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (tuple, list)) else ()
    for value in values:
        found = _first_tensor(value)
        if found is not None:
            return found
    return None


def split_batch(batch: Any, k: int) -> tuple[Any, Any]:
    """(the first ``k`` samples, the rest), keeping the structure; other leaves (a scalar) go to both."""
    if isinstance(batch, Tensor):
        return batch[:k], batch[k:]
    if isinstance(batch, dict):
        pairs = {key: split_batch(value, k) for key, value in batch.items()}
        return ({key: a for key, (a, _) in pairs.items()}, {key: b for key, (_, b) in pairs.items()})
    if isinstance(batch, (tuple, list)) and not any(isinstance(v, (Tensor, dict, tuple, list)) for v in batch):
        return batch[:k], batch[k:]  # one plain value per sample (strings, ids)
    if isinstance(batch, (tuple, list)):
        pairs = [split_batch(value, k) for value in batch]
        heads, rests = [a for a, _ in pairs], [b for _, b in pairs]
        if hasattr(batch, "_fields"):  # a namedtuple
            return type(batch)(*heads), type(batch)(*rests)
        return type(batch)(heads), type(batch)(rests)
    return batch, batch


class BatchStream:
    """Batches of ``source`` without end: a new pass (``iter(source)`` again) when one is used up, with the
    sampler's ``set_epoch(pass)`` called first when it has one (``DistributedSampler``)."""

    def __init__(self, source: Iterable[Any]) -> None:
        self.source = source
        self.passes = 0
        self._iterator: Iterator[Any] | None = None
        self._pending: Any = None
        self._pending_size = 0

    def _fetch(self) -> Any:
        for attempt in range(2):
            if self._iterator is None:
                sampler = getattr(self.source, "sampler", None)
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(self.passes)
                self._iterator = iter(self.source)
                self.passes += 1
            try:
                return next(self._iterator)
            except StopIteration:
                self._iterator = None
        raise ConfigError(f"the batches given to rounds() ({type(self.source).__name__}) yield nothing: give a "
                          "DataLoader or iterable with at least one batch")

    def peek_size(self) -> int:
        """How many samples the next batch (or the rest of a cut one) holds."""
        if self._pending is None:
            self._pending = self._fetch()
            self._pending_size = batch_size(self._pending)
        return self._pending_size

    def take(self, k: int) -> Any:
        """The next ``k`` samples (at most :meth:`peek_size`): the whole next batch, or its first k."""
        size = self.peek_size()
        if k >= size:
            batch, self._pending = self._pending, None
            return batch
        batch, self._pending = split_batch(self._pending, k)
        self._pending_size = size - k
        return batch
