"""Pure update rules, their state, and the registry of algorithm specs; shared by the real engine, the
simulator and the library API. Importing this package does not load torch (config validation reads it)."""

from .amsgrad import AMSGradState, amsgrad_step, lr_at
from .choco import PublicCopies, choco_update
from .decentralized import (consensus_delta, consensus_error, dsgd_update, mix_neighbours, mix_stack,
                            quantimed_update, sgd_update)
from .local_sgd import LocalOptimizer, LocalSGD
from .registry import (ALGORITHMS, AMSGRAD_PS, LIBRARY_NAMES, NAMES, AlgorithmSpec, Gradient, Runner, display_name,
                       get_spec, library_spec, ps_algorithm_name, spec_for)
from .schedules import LR_DECAYS, StepSizes, scheduled_lr, step_sizes

__all__ = [
    "ALGORITHMS", "AMSGRAD_PS", "AMSGradState", "AlgorithmSpec", "Gradient", "LIBRARY_NAMES", "LR_DECAYS",
    "LocalOptimizer", "LocalSGD", "NAMES", "PublicCopies", "Runner", "StepSizes", "amsgrad_step", "choco_update", "consensus_delta",
    "consensus_error", "display_name", "dsgd_update", "get_spec", "library_spec", "lr_at", "mix_neighbours",
    "mix_stack", "ps_algorithm_name", "quantimed_update", "scheduled_lr", "sgd_update", "spec_for", "step_sizes",
]
