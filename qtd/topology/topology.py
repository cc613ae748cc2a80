"""A checked graph + mixing matrix, and the per-rank view a node process needs."""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np

from ..config import TopologyConfig
from ..errors import TopologyError
from .graphs import build_graph, check_connected
from .mixing import check_mixing_matrix, mixing_matrix, spectral_gap
from .schedule import (TIME_VARYING, contraction, one_peer_exponential_rounds, period_product, random_matching_rounds,
                       round_graph, round_mixing, union_graph)


@dataclass(frozen=True)
class NodeView:
    """What node ``rank`` needs to mix: its neighbours (ascending) and w_ij for each, plus w_ii."""

    rank: int
    neighbours: tuple[int, ...]
    self_weight: float
    neighbour_weights: tuple[float, ...]


@dataclass(frozen=True, eq=False)  # eq=False: comparing ndarrays has no single truth value
class Topology:
    """A connected graph on nodes 0..n-1 with a checked mixing matrix (read-only) and its spectral gap.

    A time-varying topology (:mod:`.schedule`) also has ``rounds``, one checked W per iteration of a period
    (iteration t uses ``rounds[t % period]``); ``graph`` is then the union of the rounds, ``mixing`` the
    product of one period's W and ``beta`` its contraction ||product - J/n||_2.
    """

    graph: nx.Graph
    mixing: np.ndarray
    beta: float
    spectral_gap: float
    rounds: tuple[np.ndarray, ...] = ()

    @property
    def period(self) -> int:
        """Iterations before the mixing matrices repeat: 1 for a static graph."""
        return max(1, len(self.rounds))

    def mixing_at(self, iteration: int) -> np.ndarray:
        """The W that iteration ``iteration`` mixes with."""
        return self.rounds[iteration % len(self.rounds)] if self.rounds else self.mixing

    @property
    def nodes(self) -> int:
        """The number of nodes n (as in ``topology.nodes``)."""
        return self.graph.number_of_nodes()

    @property
    def edges(self) -> tuple[tuple[int, int], ...]:
        """Every undirected edge once, as ``(i, j)`` with i < j, sorted."""
        return tuple(sorted((min(i, j), max(i, j)) for i, j in self.graph.edges))

    def view(self, rank: int, iteration: int = 0) -> NodeView:
        """Node ``rank``'s neighbours and weights at ``iteration`` (every iteration alike for a static graph)."""
        n = self.nodes
        if not 0 <= rank < n:
            raise TopologyError(f"rank {rank} is not a node of this {n}-node topology (0..{n - 1}); start "
                                "exactly topology.nodes processes")
        row = self.mixing_at(iteration)[rank]
        if self.rounds:
            neighbours = tuple(j for j in range(n) if j != rank and row[j] > 0)
        else:
            neighbours = tuple(sorted(self.graph.neighbors(rank)))
        return NodeView(rank=rank, neighbours=neighbours, self_weight=float(row[rank]),
                        neighbour_weights=tuple(float(row[j]) for j in neighbours))

    def views(self, rank: int) -> tuple[NodeView, ...]:
        """Node ``rank``'s view in each iteration of one period."""
        return tuple(self.view(rank, t) for t in range(self.period))


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


def time_varying_topology(config: TopologyConfig) -> Topology:
    """The rounds of ``topology.kind`` (one_peer_exponential or random_matching), each W checked."""
    n = config.nodes
    if config.kind == "one_peer_exponential":
        pairs = one_peer_exponential_rounds(n)
    else:
        pairs = random_matching_rounds(n, config.period, config.seed)
    graph = union_graph(n, pairs, config.kind)
    if n > 1 and not nx.is_connected(graph):  # only random matchings can: too few rounds to join every pair
        raise TopologyError(f"topology.kind={config.kind} with topology.period={config.period}: the rounds of one "
                            f"period never join nodes {sorted(nx.node_connected_component(graph, 0))} with the "
                            "others, so the models would never agree; raise topology.period")
    rounds = []
    for round_pairs in pairs:
        w = round_mixing(n, round_pairs)
        check_mixing_matrix(w, round_graph(n, round_pairs, config.kind))
        w.flags.writeable = False
        rounds.append(w)
    product = period_product(rounds)
    beta = contraction(product)
    if not beta < 1.0 - 1e-12:
        raise TopologyError(f"topology.kind={config.kind} with topology.nodes={n}: one period of rounds does not "
                            f"contract towards the average (||product - J/n|| = {beta:.6g}); raise "
                            "topology.period or use topology.kind=one_peer_exponential")
    product.flags.writeable = False
    return Topology(graph=graph, mixing=product, beta=beta, spectral_gap=1.0 - beta, rounds=tuple(rounds))


def build_topology(config: TopologyConfig) -> Topology:
    """The graph ``config`` describes with its checked mixing matrix (TopologyError naming the key to fix)."""
    if config.kind in TIME_VARYING:
        return time_varying_topology(config)
    return topology_from_graph(build_graph(config), config.weights, config.kappa)


@dataclass(frozen=True)
class Survivors:
    """The graph among the nodes still in an elastic run, with its mixing weights (nodes keep their ids)."""

    members: tuple[int, ...]
    mixing: np.ndarray  # len(members) x len(members), rows and columns in ``members`` order
    spectral_gap: float
    edges: int

    def view(self, node: int) -> NodeView:
        """Node ``node``'s neighbours (graph node ids, ascending) and weights in the survivors' graph."""
        index = self.members.index(node)
        row = self.mixing[index]
        neighbours = tuple(m for k, m in enumerate(self.members) if k != index and row[k] > 0)
        return NodeView(rank=node, neighbours=neighbours, self_weight=float(row[index]),
                        neighbour_weights=tuple(float(row[self.members.index(j)]) for j in neighbours))


def survivors(config: TopologyConfig, members: tuple[int, ...]) -> Survivors:
    """The induced graph of ``config``'s graph on ``members``, its weights recomputed as ``topology.weights``
    says (Metropolis needs only the survivors' degrees; the Laplacian rule refreshes its default kappa).
    TopologyError naming the separated nodes when the survivors' graph is disconnected."""
    members = tuple(sorted(members))
    graph = nx.relabel_nodes(build_graph(config).subgraph(members), {m: k for k, m in enumerate(members)})
    if len(members) > 1 and not nx.is_connected(graph):
        parts = sorted((sorted(members[k] for k in c) for c in nx.connected_components(graph)), key=lambda c: c[0])
        raise TopologyError(f"without the lost node(s) the graph falls apart into {len(parts)} components "
                            f"({'; '.join(' '.join(map(str, p)) for p in parts)}), which could never agree again: "
                            "the run stops; a graph where every node has two disjoint paths to every other "
                            "(a ring, exponential, torus or random graph with a higher topology.p) survives a loss")
    if len(members) == 1:
        return Survivors(members, np.ones((1, 1)), 1.0, 0)
    w = mixing_matrix(graph, config.weights, config.kappa)
    check_mixing_matrix(w, graph)
    _, gap = spectral_gap(w)
    return Survivors(members, w, gap, graph.number_of_edges())
