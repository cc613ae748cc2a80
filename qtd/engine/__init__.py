"""Training loops: a node of a real multi-process run, and the virtual-time simulator."""

from .node import run_node
from .problem import Problem, build_problem

__all__ = ["Problem", "build_problem", "run_node"]
