"""The plain-text summary of a topology that ``qtd topology`` prints."""

from __future__ import annotations

from ..config import TopologyConfig
from .mixing import default_kappa
from .topology import Topology

MAX_NODES_LISTED = 32  # beyond this the per-node table is longer than it is useful


def describe_graph(topology: Topology, config: TopologyConfig) -> str:
    """The kind with what shaped it: torus r x c, G(n, p) and seed, or the edge-list file."""
    graph = topology.graph
    if config.kind == "torus":
        rows, cols = graph.graph["shape"]
        return f"torus {rows} x {cols}"
    if config.kind == "erdos_renyi":
        return f"erdos_renyi G(n={config.nodes}, p={config.p:g}), seed {config.seed}"
    if config.kind == "file":
        return f"file {config.path}"
    return config.kind


def describe_weights(topology: Topology, config: TopologyConfig) -> str:
    if config.weights == "metropolis":
        return "metropolis, w_ij = 1/(1 + max(d_i, d_j))"
    if config.kappa is None:
        return f"laplacian, W = I - L/kappa with kappa = {default_kappa(topology.graph):g} (max degree + 2)"
    return f"laplacian, W = I - L/kappa with kappa = {config.kappa:g}"


def topology_report(topology: Topology, config: TopologyConfig) -> str:
    """Nodes, edges, degree range, weights, beta and spectral gap; per-node weights for small graphs."""
    degrees = [d for _, d in topology.graph.degree]
    lines = [
        f"topology      {describe_graph(topology, config)}",
        f"nodes         {topology.nodes}",
        f"edges         {len(topology.edges)}",
        f"degree        {min(degrees)}..{max(degrees)} (mean {sum(degrees) / len(degrees):.2f})",
        f"weights       {describe_weights(topology, config)}",
        f"beta          {topology.beta:.6f}  (max |lambda_2|, |lambda_n| of W)",
        f"spectral gap  {topology.spectral_gap:.6f}  (1 - beta)",
    ]
    if topology.rounds:
        return "\n".join(lines[:3] + _schedule_lines(topology))
    if topology.nodes <= MAX_NODES_LISTED:
        lines.append("node  w_ii    neighbour: w_ij")
        for rank in range(topology.nodes):
            view = topology.view(rank)
            pairs = "  ".join(f"{j}: {w:.4f}" for j, w in zip(view.neighbours, view.neighbour_weights))
            lines.append(f"{rank:>4}  {view.self_weight:.4f}  {pairs}".rstrip())
    return "\n".join(lines)


def _schedule_lines(topology: Topology) -> list[str]:
    """A time-varying topology: its rounds (each node's one peer) and one period's contraction."""
    n = topology.nodes
    lines = [f"period        {topology.period} rounds (iteration t mixes with round t mod {topology.period}); "
             f"every node sends at most one message per iteration",
             f"weights       1/2 between the two nodes of a pair and on their diagonal, 1 for a node without a peer",
             f"beta          {topology.beta:.6f}  (||W_last ... W_0 - J/n||_2 over one period)",
             f"spectral gap  {topology.spectral_gap:.6f}  (1 - beta; 1: one period averages exactly)"]
    for k in range(min(topology.period, MAX_NODES_LISTED)):
        peers = [topology.view(i, k).neighbours for i in range(min(n, MAX_NODES_LISTED))]
        listed = " ".join(f"{i}-{p[0]}" if p else f"{i}-" for i, p in enumerate(peers) if not p or i < p[0])
        lines.append(f"round {k:<7} {listed}{' ...' if n > MAX_NODES_LISTED else ''}")
    return lines
