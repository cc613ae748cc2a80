"""What each algorithm is, in one place: a small frozen spec per name, and the registry of them.

A spec says everything the rest of qtd needs to know about an algorithm: how its gradients are computed
(until a deadline, or a fixed batch), what goes on the wire (which ``compression.bits`` it accepts), which
step sizes apply, its pure update rule (used by the real step, the simulator and the tests' reference
alike), and how it runs (synchronous gossip, a collective, asynchronous events, parameter server). The
simulator's virtual-time formula follows from the gradient mode and the runner (:mod:`qtd.sim.clock`).

Config validation, the engine, the simulator and the docs read this registry; nowhere else does code
compare algorithm names. Pure: no torch import at module level, so checking a config stays fast.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Optional

from ..echo import shown
from ..errors import ConfigError
from ..formats import ALLOWED_BITS, UNQUANTIZED_BITS
from .choco import choco_update
from .decentralized import consensus_delta, dsgd_update, quantimed_update, sgd_update
from .schedules import StepSizes, step_sizes

if TYPE_CHECKING:
    from torch import Tensor


class Runner(enum.Enum):
    """How a node runs the algorithm (which step object the engine and the simulator use)."""

    GOSSIP = "synchronous gossip: one message to and from every neighbour per iteration"
    DIFFERENCE_GOSSIP = ("synchronous gossip of compressed differences against public copies (CHOCO): one "
                         "message to and from every neighbour per iteration")
    COLLECTIVE = "a collective: the mean gradient of all nodes through one all-reduce"
    ASYNC = "asynchronous events: every node at its own pace, with the newest neighbour models it holds"
    PS = "parameter server: compressed gradients all-gathered, the server state replicated on every rank"

    @property
    def resumes(self) -> bool:
        """Whether a run resumes from its checkpoints: asynchronous nodes stop at different iterations, so
        there is no common point to resume from."""
        return self is not Runner.ASYNC


class Gradient(enum.Enum):
    DEADLINE = "micro-batches until the wall-clock deadline algorithm.deadline_s"
    FIXED_BATCH = "a fixed batch of algorithm.batch_size samples"


# rule(x, mixed, w_self, grad, sizes) -> new x. ``mixed`` is sum_{j in N_i} w_ij z_j; for a collective
# runner ``mixed`` and ``w_self`` are None and ``grad`` is already the mean over all nodes; for difference
# gossip ``mixed`` is the public copies' consensus direction sum_{j in N_i} w_ij (x̂_j - x̂_i) (qtd.algorithms.choco).
UpdateRule = Callable[["Tensor", Optional["Tensor"], "Tensor | float | None", "Tensor", StepSizes], "Tensor"]
# consensus(mixed, w_self, x_sent, sizes) -> what the rule's consensus step adds to the model, applied after a
# local optimizer step on x (the library wrapper's form, qtd.api): rule = optimizer step + consensus.
ConsensusRule = Callable[["Tensor", "Tensor | float", "Tensor", StepSizes], "Tensor"]


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    summary: str  # one line, for docs and messages
    runner: Runner
    gradient: Gradient
    rule: UpdateRule
    uses_eps: bool = False  # has a consensus step eps (algorithm.eps applies)
    uses_gamma: bool = False  # has CHOCO's consensus step gamma (algorithm.gamma applies)
    allowed_bits: tuple[int, ...] = ALLOWED_BITS  # compression.bits of its messages; () when it sends none
    sends_float32_gradients: bool = False  # the collective moves float32 gradients, as DDP does
    consensus: Optional[ConsensusRule] = None  # the rule split as "optimizer step, then consensus" (None: it cannot be)

    @property
    def deadline_bound(self) -> bool:
        return self.gradient is Gradient.DEADLINE

    @property
    def in_library(self) -> bool:
        """Whether the library wrapper (qtd.Decentralized) runs it: a collective, or a gossip rule that splits
        into the user's optimizer step and a consensus step."""
        return self.runner is Runner.COLLECTIVE or (self.runner is Runner.GOSSIP and self.consensus is not None)

    @property
    def step_keys(self) -> str:
        """The config keys of its step sizes, for a message about a diverged run."""
        if self.runner is Runner.PS:
            return "ps.lr"
        return "algorithm.alpha" + (" or algorithm.eps" if self.uses_eps else "") + (
            " or algorithm.gamma" if self.uses_gamma else "")

    def step_sizes(self, schedule: str, alpha: float, eps: float, horizon: int, gamma: float = 1.0) -> StepSizes:
        """alpha, and eps and gamma where the rule has them (1 otherwise), for a run of ``horizon`` iterations."""
        sizes = step_sizes(schedule, alpha, eps if self.uses_eps else 1.0, horizon)
        return replace(sizes, gamma=gamma) if self.uses_gamma else sizes

    def update(self, x: "Tensor", mixed: "Tensor | None", w_self: "Tensor | float | None", grad: "Tensor",
               sizes: StepSizes) -> "Tensor":
        return self.rule(x, mixed, w_self, grad, sizes)


def _quantized_consensus(x, mixed, w_self, grad, sizes: StepSizes):
    return quantimed_update(x, mixed, w_self, grad, sizes.alpha, sizes.eps)


def _exact_consensus(x, mixed, w_self, grad, sizes: StepSizes):
    return dsgd_update(x, mixed, w_self, grad, sizes.alpha)


def _mean_gradient_step(x, mixed, w_self, grad, sizes: StepSizes):
    return sgd_update(x, grad, sizes.alpha)


def _consensus(mixed, w_self, x_sent, sizes: StepSizes):
    return consensus_delta(mixed, w_self, x_sent, sizes.eps)  # eps = 1 for DSGD (its spec has no eps)


def _difference_consensus(x, direction, w_self, grad, sizes: StepSizes):
    return choco_update(x, direction, grad, sizes.alpha, sizes.gamma)


def _ps_rule(x, mixed, w_self, grad, sizes):  # the server's AMSGrad step needs its state: see qtd.algorithms.amsgrad
    raise TypeError("parameter-server mode updates through amsgrad_step on the replicated server state")


QUANTIMED = AlgorithmSpec(
    "quantimed", "quantized models to and from the neighbours, gradients until the deadline T_d",
    Runner.GOSSIP, Gradient.DEADLINE, _quantized_consensus, uses_eps=True, consensus=_consensus)
QDSGD = AlgorithmSpec(
    "qdsgd", "the QuanTimed update with a fixed batch B and no deadline",
    Runner.GOSSIP, Gradient.FIXED_BATCH, _quantized_consensus, uses_eps=True, consensus=_consensus)
DSGD = AlgorithmSpec(
    "dsgd", "x_i <- sum_j w_ij x_j - alpha g_i with 16- or 32-bit model copies, fixed batch B",
    Runner.GOSSIP, Gradient.FIXED_BATCH, _exact_consensus, allowed_bits=UNQUANTIZED_BITS, consensus=_consensus)
CHOCO = AlgorithmSpec(
    "choco", "CHOCO-SGD: compressed differences against public copies, consensus step gamma, fixed batch B",
    Runner.DIFFERENCE_GOSSIP, Gradient.FIXED_BATCH, _difference_consensus, uses_gamma=True)
QUANTIMED_CHOCO = AlgorithmSpec(
    "quantimed_choco", "gradients until the deadline T_d, CHOCO's compressed differences on the wire",
    Runner.DIFFERENCE_GOSSIP, Gradient.DEADLINE, _difference_consensus, uses_gamma=True)
ASYNC_DSGD = AlgorithmSpec(
    "async_dsgd", "DSGD at each node's own pace with the newest model it holds from each neighbour",
    Runner.ASYNC, Gradient.FIXED_BATCH, _exact_consensus)
ALLREDUCE_SGD = AlgorithmSpec(
    "allreduce_sgd", "synchronous data-parallel SGD: the mean gradient of all nodes via one all-reduce",
    Runner.COLLECTIVE, Gradient.FIXED_BATCH, _mean_gradient_step, allowed_bits=(), sends_float32_gradients=True)
AMSGRAD_PS = AlgorithmSpec(
    "amsgrad_ps", "TopK / Block-Sign compressed gradients with error feedback, AMSGrad on replicated server state",
    Runner.PS, Gradient.FIXED_BATCH, _ps_rule, allowed_bits=())

ALGORITHMS: dict[str, AlgorithmSpec] = {spec.name: spec for spec in (QUANTIMED, QDSGD, DSGD, ASYNC_DSGD, ALLREDUCE_SGD,
                                                                     CHOCO, QUANTIMED_CHOCO)}
NAMES = tuple(ALGORITHMS)  # what algorithm.name accepts (mode: decentralized)
LIBRARY_NAMES = tuple(name for name, spec in ALGORITHMS.items() if spec.in_library)  # what qtd.Decentralized runs


def get_spec(name: str, key: str = "algorithm.name") -> AlgorithmSpec:
    """The spec of ``algorithm.name``; a ConfigError naming ``key`` and listing the names otherwise."""
    try:
        return ALGORITHMS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"{key}={shown(name)} is not allowed: choose one of {', '.join(NAMES)}") from None


def library_spec(name: str) -> AlgorithmSpec:
    """The spec the library wrapper runs for ``algorithm=name``; a ConfigError naming the ones it runs otherwise."""
    spec = get_spec(name, "algorithm")
    if not spec.in_library:
        raise ConfigError(f"algorithm={shown(name)} does not run as optimizer step + consensus in your own loop: "
                          f"choose one of {', '.join(LIBRARY_NAMES)} (run {name} with qtd launch)")
    return spec


def spec_for(mode: str, name: str) -> AlgorithmSpec:
    """The spec a run uses: parameter-server mode has one (its variant is ps.compressor), else algorithm.name's."""
    return AMSGRAD_PS if mode == "ps" else get_spec(name)


def display_name(spec: AlgorithmSpec, compressor: str, error_feedback: bool) -> str:
    """What summary.json, the progress bar and the launcher call a run's algorithm (``ps.compressor`` and
    ``ps.error_feedback`` name the parameter-server variant)."""
    return ps_algorithm_name(compressor, error_feedback) if spec.runner is Runner.PS else spec.name


def ps_algorithm_name(compressor: str, error_feedback: bool) -> str:
    """amsgrad_dense, amsgrad_topk[_ef], amsgrad_blocksign[_ef]: what a PS run reports as its algorithm."""
    if compressor == "none":
        return "amsgrad_dense"
    return f"amsgrad_{compressor}" + ("_ef" if error_feedback else "")
