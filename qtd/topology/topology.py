"""A checked graph + mixing matrix, and the per-rank view a node process needs."""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np

from ..config import TopologyConfig
from ..errors import TopologyError
from .graphs import build_graph, check_connected
from .mixing import check_mixing_matrix, mixing_matrix, spectral_gap


@dataclass(frozen=True)
class NodeView:
    """What node ``rank`` needs to mix: its neighbours (ascending) and w_ij for each, plus w_ii."""

    rank: int
    neighbours: tuple[int, ...]
    self_weight: float
    neighbour_weights: tuple[float, ...]


@dataclass(frozen=True, eq=False)  # eq=False: comparing ndarrays has no single truth value
class Topology:
    """A connected graph on nodes 0..n-1 with a checked mixing matrix (read-only) and its spectral gap."""

    graph: nx.Graph
    mixing: np.ndarray
    beta: float
    spectral_gap: float

    @property
    def nodes(self) -> int:
        """The number of nodes n (as in ``topology.nodes``)."""
        return self.graph.number_of_nodes()

    @property
    def edges(self) -> tuple[tuple[int, int], ...]:
        """Every undirected edge once, as ``(i, j)`` with i < j, sorted."""
        return tuple(sorted((min(i, j), max(i, j)) for i, j in self.graph.edges))

    def view(self, rank: int) -> NodeView:
        n = self.nodes
        if not 0 <= rank < n:
            raise TopologyError(f"rank {rank} is not a node of this {n}-node topology (0..{n - 1}); start "
                                "exactly topology.nodes processes")
        neighbours = tuple(sorted(self.graph.neighbors(rank)))
        row = self.mixing[rank]
        return NodeView(rank=rank, neighbours=neighbours, self_weight=float(row[rank]),
                        neighbour_weights=tuple(float(row[j]) for j in neighbours))


def topology_from_graph(graph: nx.Graph, weights: str = "laplacian", kappa: float | None = None) -> Topology:
    """Check that ``graph`` is connected, build and check its mixing matrix, compute the spectral gap."""
    check_connected(graph)
    w = mixing_matrix(graph, weights, kappa)
    check_mixing_matrix(w, graph)
    beta, gap = spectral_gap(w)
    if not beta < 1.0 - 1e-12:
        raise TopologyError(f"the mixing matrix does not converge (beta = {beta:.6g}, spectral gap "
                            f"{gap:.3g}): the nodes would never agree; use topology.weights=metropolis or a "
                            "larger topology.kappa")
    w.flags.writeable = False
    return Topology(graph=graph, mixing=w, beta=beta, spectral_gap=gap)


def build_topology(config: TopologyConfig) -> Topology:
    """The graph ``config`` describes with its checked mixing matrix (TopologyError naming the key to fix)."""
    return topology_from_graph(build_graph(config), config.weights, config.kappa)
