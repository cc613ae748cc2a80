"""Pure update rules and their state, shared by the real engine and the simulator."""

from .amsgrad import AMSGradState, amsgrad_step, lr_at
from .decentralized import (async_dsgd_update, consensus_error, dsgd_update, mix_neighbours, qdsgd_update,
                            quantimed_update, sgd_update)
from .schedules import StepSizes, step_sizes

__all__ = [
    "AMSGradState", "StepSizes", "amsgrad_step", "async_dsgd_update", "consensus_error", "dsgd_update",
    "lr_at", "mix_neighbours", "qdsgd_update", "quantimed_update", "sgd_update", "step_sizes",
]
