"""The model registry (paper MLPs, CNNs, ResNet-18, logistic regression, your own) and flat parameter views."""

from .flat import FlatModel
from .nets import MLP, PAPER_DEEP_HIDDEN, CompAmsCNN, SmallCNN
from .registry import build_model

__all__ = ["MLP", "PAPER_DEEP_HIDDEN", "CompAmsCNN", "FlatModel", "SmallCNN", "build_model"]
