"""One flat buffer for all parameters and one for all gradients, with the module's tensors as views.

The decentralized algorithms treat a model as one vector x of p numbers: quantize it, send it, mix it
with the neighbours', step along the gradient. With every ``param.data`` a view into ``params`` and every
``param.grad`` a view into ``grads``, those are single tensor operations on the flat buffers and the
module sees the result at once; nothing is gathered or scattered per layer on the hot path.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from ..errors import ConfigError


class FlatModel:
    """``module``'s trainable parameters as views into ``params`` (float32, length ``numel``).

    Autograd accumulates gradients in place into the existing ``param.grad`` views, so ``backward()``
    fills ``grads``. Rules that keep the views intact:

    - move the module to its device *before* wrapping it (``module.to()`` allocates new tensors);
    - clear gradients with :meth:`zero_grad`, not ``module.zero_grad()`` (that sets them to None; if it
      happens anyway, :meth:`zero_grad` re-attaches the views);
    - load weights with ``params.copy_(...)`` or ``module.load_state_dict`` (which copies in place).

    Parameters with ``requires_grad=False`` are left out: they are never trained, so never exchanged.
    Buffers (e.g. BatchNorm running statistics) are not in ``params`` either; a warning says so.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self._parameters = [p for p in module.parameters() if p.requires_grad]
        if not self._parameters:
            raise ConfigError(f"{type(module).__name__} has no trainable parameters to flatten")
        for name, parameter in module.named_parameters():
            if parameter.requires_grad and parameter.dtype != torch.float32:
                raise ConfigError(f"parameter {name!r} is {parameter.dtype}: qtd trains float32 models "
                                  f"(call module.float() before wrapping it)")
        devices = {p.device for p in self._parameters}
        if len(devices) > 1:
            raise ConfigError(f"the model's parameters are spread over {sorted(map(str, devices))}: "
                              f"move the whole module to one device before wrapping it")
        if any(getattr(m, "track_running_stats", False) for m in module.modules()):
            warnings.warn(f"{type(module).__name__} has BatchNorm running statistics: they are buffers, not "
                          f"parameters, so nodes never exchange them while training (evaluations and model.pt "
                          f"use their average); prefer GroupNorm/LayerNorm, or qtd.Decentralized, which mixes them",
                          stacklevel=2)
        device = devices.pop()
        self.numel = sum(p.numel() for p in self._parameters)
        self.params = torch.empty(self.numel, dtype=torch.float32, device=device)
        self.grads = torch.zeros(self.numel, dtype=torch.float32, device=device)
        offset = 0
        self._slices: list[tuple[int, int]] = []
        with torch.no_grad():
            for parameter in self._parameters:
                size = parameter.numel()
                self.params[offset:offset + size].copy_(parameter.reshape(-1))
                self._slices.append((offset, size))
                offset += size
        for parameter, (offset, size) in zip(self._parameters, self._slices):
            parameter.data = self.params[offset:offset + size].view_as(parameter)
        self._attach_grads()

    def _attach_grads(self) -> None:
        for parameter, (offset, size) in zip(self._parameters, self._slices):
            parameter.grad = self.grads[offset:offset + size].view_as(parameter)

    def _grads_attached(self) -> bool:
        base, itemsize = self.grads.data_ptr(), self.grads.element_size()
        return all(p.grad is not None and p.grad.data_ptr() == base + offset * itemsize
                   for p, (offset, _) in zip(self._parameters, self._slices))

    def zero_grad(self) -> None:
        """Zero ``grads`` (one fill), re-attaching any ``param.grad`` that something replaced."""
        if not self._grads_attached():
            self._attach_grads()
        self.grads.zero_()

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.params.device

    def named_slices(self) -> list[tuple[str, int, int]]:
        """(parameter name, offset, length) of each parameter inside ``params``, in order."""
        names = {id(p): name for name, p in self.module.named_parameters()}
        return [(names[id(p)], offset, size) for p, (offset, size) in zip(self._parameters, self._slices)]

    def check_views(self) -> None:
        """Raise if a parameter no longer lives in ``params`` (e.g. after ``module.to()``)."""
        base, itemsize = self.params.data_ptr(), self.params.element_size()
        for parameter, (offset, _) in zip(self._parameters, self._slices):
            if parameter.data_ptr() != base + offset * itemsize:
                raise RuntimeError("a parameter no longer lives in FlatModel.params: the module was moved or "
                                   "its parameters were replaced after wrapping; wrap it again")
