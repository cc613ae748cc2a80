"""The virtual-time simulator: all nodes in one process, on the paper's clock (``qtd sim``).

It shares the algorithm specs and update rules, the quantizer and wire messages, the problem, the
evaluation points and the summary with real runs; only its clock is its own. It never imports the
network layer (:mod:`qtd.comm`).
"""

from .simulation import SimResult, Simulation, simulate

__all__ = ["SimResult", "Simulation", "simulate"]
