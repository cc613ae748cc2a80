"""The wall-clock gradient loop and emulated straggler pacing."""

from .loop import DeadlinePhase, DeadlineTimer, FixedBatchPhase, GradientResult, compute_fixed_batch
from .speeds import SpeedModel, deadline_samples

__all__ = ["DeadlinePhase", "DeadlineTimer", "FixedBatchPhase", "GradientResult", "SpeedModel", "compute_fixed_batch",
           "deadline_samples"]
