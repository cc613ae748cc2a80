"""Graph builders: one function per ``topology.kind``, each returning an undirected graph on nodes 0..n-1.

Every builder stores what it built in ``graph.graph`` (``kind``, and ``shape`` for a torus) so that a
report or a drawing can lay the graph out without the config. Degenerate sizes follow one rule: a
graph never gets self-loops or parallel edges, so a "ring" of 2 nodes is a single link and a ring of
1 node is one node with no links (a single node trains alone; W = [[1]]).
"""

from __future__ import annotations

import math
import random

import networkx as nx

from ..config import TopologyConfig
from ..echo import shown
from ..errors import TopologyError
from .edge_file import read_edge_list

# Draws of G(n, p) before giving up on a connected one. At the connectivity threshold p = ln(n)/n a
# draw is connected with probability about 1/e, so 100 failures mean p is far too small, not bad luck.
ER_MAX_ATTEMPTS = 100


def _empty(n: int, kind: str) -> nx.Graph:
    graph = nx.Graph(kind=kind)
    graph.add_nodes_from(range(n))
    return graph


def ring_graph(n: int) -> nx.Graph:
    """Node i linked to i +- 1 (mod n). n = 2 gives one link, n = 1 a lone node."""
    graph = _empty(n, "ring")
    graph.add_edges_from((i, (i + 1) % n) for i in range(n) if (i + 1) % n != i)
    return graph


def torus_shape(n: int) -> tuple[int, int]:
    """The most square factorization r x c of n with 2 <= r <= c; TopologyError when there is none."""
    rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    if rows < 2:
        why = "a torus needs at least 2 x 2 nodes" if n < 4 else f"{n} only factors as 1 x {n}"
        raise TopologyError(
            f"topology.nodes={n} cannot be laid out as a 2-D torus ({why}); use topology.nodes = r*c with "
            "r, c >= 2 (e.g. 4, 6, 8, 9, 12, 16) or topology.kind=ring")
    return rows, n // rows


def torus_graph(n: int) -> nx.Graph:
    """An r x c grid with wrap-around links; node (row, col) is row*c + col.

    A side of length 2 has its two wrap-around links on the same pair of nodes, so they are one edge:
    a 2 x c torus has degree 3 and a 2 x 2 torus is a 4-cycle.
    """
    rows, cols = torus_shape(n)
    graph = _empty(n, "torus")
    graph.graph["shape"] = (rows, cols)
    for row in range(rows):
        for col in range(cols):
            node = row * cols + col
            graph.add_edge(node, row * cols + (col + 1) % cols)
            graph.add_edge(node, ((row + 1) % rows) * cols + col)
    return graph


def complete_graph(n: int) -> nx.Graph:
    graph = _empty(n, "complete")
    graph.add_edges_from(nx.complete_graph(n).edges)
    return graph


def star_graph(n: int) -> nx.Graph:
    """Node 0 is the hub, linked to every other node."""
    graph = _empty(n, "star")
    graph.add_edges_from((0, i) for i in range(1, n))
    return graph


def exponential_graph(n: int) -> nx.Graph:
    """Node i linked to i +- 2^k (mod n) for every 2^k < n: the undirected exponential graph of SGP and
    BlueFog (``ExponentialGraph``), degree about 2*log2(n) with a spectral gap that shrinks only slowly."""
    graph = _empty(n, "exponential")
    hop = 1
    while hop < n:
        graph.add_edges_from((i, (i + hop) % n) for i in range(n))
        hop *= 2
    return graph


def erdos_renyi_graph(n: int, p: float, seed: int) -> nx.Graph:
    """G(n, p) drawn with ``seed``, redrawn (same random stream) until connected.

    The same (n, p, seed) always gives the same graph. TopologyError names topology.p when no
    connected draw turns up within :data:`ER_MAX_ATTEMPTS`.
    """
    rng = random.Random(seed)
    for _ in range(ER_MAX_ATTEMPTS):
        drawn = nx.fast_gnp_random_graph(n, p, seed=rng)
        if nx.is_connected(drawn):
            graph = _empty(n, "erdos_renyi")
            graph.add_edges_from(drawn.edges)
            return graph
    threshold = math.log(n) / n
    raise TopologyError(
        f"topology.kind=erdos_renyi found no connected G(n={n}, p={p}) in {ER_MAX_ATTEMPTS} draws "
        f"(topology.seed={seed}); raise topology.p well above the connectivity threshold "
        f"ln(n)/n = {threshold:.3g}, e.g. topology.p={min(1.0, 2 * threshold):.3g}")


def build_graph(config: TopologyConfig) -> nx.Graph:
    """The graph ``config`` describes, on nodes 0..config.nodes-1 (not yet checked for connectivity)."""
    n = config.nodes
    if config.kind == "ring":
        return ring_graph(n)
    if config.kind == "torus":
        return torus_graph(n)
    if config.kind == "complete":
        return complete_graph(n)
    if config.kind == "star":
        return star_graph(n)
    if config.kind == "exponential":
        return exponential_graph(n)
    if config.kind == "erdos_renyi":
        return erdos_renyi_graph(n, config.p, config.seed)
    if config.kind == "file":
        graph = _empty(n, "file")
        graph.graph["path"] = config.path
        graph.add_edges_from(read_edge_list(config.path, n))
        return graph
    raise TopologyError(f"topology.kind={shown(config.kind)} is not a graph qtd can build")


def check_connected(graph: nx.Graph) -> None:
    """TopologyError when some node cannot reach node 0: decentralized averaging would never agree."""
    n = graph.number_of_nodes()
    if n == 0:
        raise TopologyError("the graph has no nodes; set topology.nodes >= 1")
    if nx.is_connected(graph):
        return
    components = sorted((sorted(c) for c in nx.connected_components(graph)), key=lambda c: c[0])
    stranded = [node for component in components[1:] for node in component]
    listed = ", ".join(map(str, stranded[:10])) + (", ..." if len(stranded) > 10 else "")
    where = graph.graph.get("kind", "given")
    fix = (f"add edges to the file topology.path={shown(graph.graph['path'])} that join them"
           if where == "file" else "give a connected graph")
    raise TopologyError(
        f"the {where} graph is disconnected ({len(components)} components): nodes {listed} cannot reach "
        f"node 0, so the nodes' models would never agree; {fix}")
