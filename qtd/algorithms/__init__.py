"""Pure update rules, their state, and the registry of algorithm specs; shared by the real engine, the
simulator and the library API. Importing this package does not load torch (config validation reads it)."""

from .amsgrad import AMSGradState, amsgrad_step, lr_at
from .decentralized import consensus_error, dsgd_update, mix_neighbours, mix_stack, quantimed_update, sgd_update
from .registry import (ALGORITHMS, AMSGRAD_PS, NAMES, AlgorithmSpec, Gradient, Runner, display_name, get_spec,
                       ps_algorithm_name, spec_for)
from .schedules import StepSizes, step_sizes

__all__ = [
    "ALGORITHMS", "AMSGRAD_PS", "AMSGradState", "AlgorithmSpec", "Gradient", "NAMES", "Runner", "StepSizes",
    "amsgrad_step", "consensus_error", "display_name", "dsgd_update", "get_spec", "lr_at", "mix_neighbours", "mix_stack",
    "ps_algorithm_name", "quantimed_update", "sgd_update", "spec_for", "step_sizes",
]
