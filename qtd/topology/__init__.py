"""Pure topology layer: graphs -> mixing matrix W -> checks, spectral gap, per-rank neighbour weights.

Uses networkx and numpy only; never imports torch.distributed.
"""

from .graphs import build_graph, check_connected, torus_shape
from .mixing import check_mixing_matrix, default_kappa, mixing_matrix, spectral_gap
from .topology import NodeView, Survivors, Topology, build_topology, survivors, topology_from_graph

__all__ = [
    "NodeView", "Survivors", "Topology", "build_graph", "survivors", "build_topology", "check_connected", "check_mixing_matrix",
    "default_kappa", "mixing_matrix", "spectral_gap", "topology_from_graph", "torus_shape",
]
