"""Parameter-server mode as a ``torch.optim.Optimizer``: :class:`TopKAMSGrad` (like DeepSpeed's ``OnebitAdam``).

``step()`` is collective: every worker compresses its gradient with error feedback (TopK, Block-Sign or none),
all-gathers the messages, decodes them in rank order and takes the same AMSGrad step on its replica of the
server state, through the engine's own :class:`qtd.engine.steps.ps_server.ReplicatedServer`. On the same
gradients it therefore takes bit for bit the step of ``mode: ps`` runs (``qtd launch configs/ps_digits.yaml``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from ..algorithms import AMSGradState, amsgrad_step
from ..comm import World, init_world
from ..errors import ConfigError
from ..engine.steps.ps_server import ReplicatedServer, ServerTraffic, make_codec
from .tensors import TensorVector

COMPRESSORS = ("topk", "blocksign", "none")


def _fail(name: str, value: object, allowed: str) -> None:
    raise ConfigError(f"{name}={value!r} is not allowed: {allowed}")


class TopKAMSGrad(ServerTraffic, torch.optim.Optimizer):
    """TopK-EF AMSGrad (COMP-AMS) over the process group (joined from torchrun's environment, or ``world``).

    ``compressor``: ``topk`` sends the k = ``k_ratio`` * p largest entries of g + e (``value_bits`` 32 or 16),
    ``blocksign`` one sign bit per entry and one scale per parameter tensor, ``none`` the dense float32
    gradient through an all-reduce. ``error_feedback`` keeps e <- e + g - c. The learning rate is read from
    ``param_groups`` at every step, so any ``torch.optim.lr_scheduler`` works; all groups share one server
    state (betas and eps may differ per group). Parameters without a gradient count as a zero gradient.
    ``state_dict()`` holds the server state (m, v, v_hat, step) and the error-feedback residual.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 k_ratio: float = 0.01, error_feedback: bool = True, compressor: str = "topk",
                 value_bits: int = 32, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 world: World | None = None) -> None:
        if not (isinstance(lr, (int, float)) and 0 < lr < math.inf):
            _fail("lr", lr, "must be a finite number > 0")
        if compressor not in COMPRESSORS:
            _fail("compressor", compressor, "choose one of " + ", ".join(COMPRESSORS))
        if not 0 < k_ratio <= 1:
            _fail("k_ratio", k_ratio, "the share of the parameters sent must be in (0, 1]")
        if value_bits not in (16, 32):
            _fail("value_bits", value_bits, "use 32 (float32 values) or 16 (float16 values)")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            _fail("betas", betas, "two numbers in [0, 1)")
        if not eps > 0:
            _fail("eps", eps, "must be > 0")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})
        self.world = world if world is not None else init_world()
        tensors = [p for group in self.param_groups for p in group["params"]]
        if any(p.dtype != torch.float32 for p in tensors) or len({p.device for p in tensors}) != 1:
            raise ConfigError("TopKAMSGrad steps float32 parameters on one device: call module.float() and move "
                              "the whole model to one device first")
        self._vector = TensorVector(tensors)
        self._grad = torch.zeros_like(self._vector.flat)
        self._slices, offset = [], 0
        for group in self.param_groups:
            size = sum(p.numel() for p in group["params"])
            self._slices.append(slice(offset, offset + size))
            offset += size
        codec = make_codec(compressor, self._vector.flat, self._vector.sizes, k_ratio, value_bits, error_feedback)
        self.server = ReplicatedServer(self.world, self._vector.flat, codec)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if hasattr(self, "server"):
            raise ConfigError("TopKAMSGrad's server state covers the parameters it was built with: build a new "
                              "optimizer instead of calling add_param_group")
        super().add_param_group(param_group)

    def _gather_grads(self) -> Tensor:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._vector.tensors]
        torch.cat([g.detach().reshape(-1) for g in grads], out=self._grad)
        return self._grad

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Collective: one replicated AMSGrad step from this worker's compressed gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        theta, grad = self._vector.gather(), self._gather_grads()
        iteration = self.server.state.step
        first = self.param_groups[0]
        if all(g["lr"] == first["lr"] and g["betas"] == first["betas"] and g["eps"] == first["eps"]
               for g in self.param_groups):
            self.server.step(theta, grad, iteration, first["lr"], *first["betas"], first["eps"])
        else:
            self._step_per_group(theta, grad, iteration)
        self._vector.copy_(theta)
        return loss

    def _step_per_group(self, theta: Tensor, grad: Tensor, iteration: int) -> None:
        """Groups with their own hyperparameters: one mean gradient, then AMSGrad slice by slice."""
        server, s = self.server, self.server.state
        server.mean_gradient(grad, iteration)
        for group, part in zip(self.param_groups, self._slices):
            state = AMSGradState(s.m[part], s.v[part], s.v_hat[part], s.step)
            amsgrad_step(theta[part], server.mean_grad[part], state, group["lr"], *group["betas"], group["eps"])
        s.step += 1
        server.upload_bytes += server.message_nbytes
        server.bytes_sent += server.wire_nbytes

    def check_replicas(self) -> None:
        """Collective: raise ReplicaDriftError on every rank if any worker's replica differs from rank 0's."""
        self.server.check_replicas(self._vector.gather(), self.server.state.step,
                                   "load the last state_dict saved before the drift on every rank")

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["server"] = self.server.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "server" not in state_dict:
            raise ConfigError("this state_dict has no 'server' entry: it was not saved by TopKAMSGrad.state_dict()")
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "server"})
        self.server.load_state_dict(state_dict["server"], "it was saved for other parameters or another "
                                    "compressor, k_ratio or error_feedback setting")
