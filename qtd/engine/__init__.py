"""Training loops: a node of a real multi-process run (decentralized or parameter-server mode), and the
virtual-time simulator."""

from .node import run_node
from .problem import Problem, build_problem
from .ps import run_ps_node

__all__ = ["Problem", "build_problem", "run_node", "run_ps_node"]
