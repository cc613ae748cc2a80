"""The wall-clock gradient loop and emulated straggler pacing."""

from .loop import DeadlineTimer, GradientResult, compute_fixed_batch
from .speeds import SpeedModel, deadline_samples

__all__ = ["DeadlineTimer", "GradientResult", "SpeedModel", "compute_fixed_batch", "deadline_samples"]
