"""A PNG drawing of a topology, made with matplotlib's Agg canvas (no display, no pyplot state)."""

from __future__ import annotations

import math
from pathlib import Path

import networkx as nx
import numpy as np

from ..errors import QtdError
from ..echo import cut, shown
from .topology import Topology

MAX_LABELLED_NODES = 64
MAX_SPRING_NODES = 400  # networkx's dense spring layout is O(n^2) per step; larger graphs go on a circle


def node_positions(graph: nx.Graph) -> dict[int, tuple[float, float]]:
    """A layout that shows the structure: a grid for a torus, the hub in the middle of a star, a circle
    for rings and circulant graphs, a seeded spring layout for random and file graphs."""
    n = graph.number_of_nodes()
    kind = graph.graph.get("kind")
    if kind == "torus":
        _, cols = graph.graph["shape"]
        return {i: (float(i % cols), -float(i // cols)) for i in range(n)}
    if kind in ("ring", "exponential", "complete", "star") or n > MAX_SPRING_NODES or n < 3:
        rim = [i for i in range(n) if not (kind == "star" and i == 0)]
        positions = {i: (math.cos(2 * math.pi * k / len(rim)), math.sin(2 * math.pi * k / len(rim)))
                     for k, i in enumerate(rim)}
        if kind == "star" and n > 0:
            positions[0] = (0.0, 0.0)
        return positions
    layout = nx.spring_layout(graph, seed=0)
    return {i: (float(x), float(y)) for i, (x, y) in layout.items()}


def _split_segments(topology: Topology, positions: dict[int, tuple[float, float]]
                    ) -> tuple[list[list[tuple[float, float]]], list[list[tuple[float, float]]]]:
    """Edge segments to draw solid, and the torus's wrap-around links as dashed stubs pointing off the
    grid (drawn straight, they would run across the whole grid and hide it)."""
    direct, wrapped = [], []
    torus = topology.graph.graph.get("kind") == "torus"
    for i, j in topology.edges:
        (xi, yi), (xj, yj) = positions[i], positions[j]
        if torus and abs(xi - xj) + abs(yi - yj) > 1.5:
            # a short stub from each end, pointing away from the other end
            dx, dy = np.sign(xi - xj) * 0.4, np.sign(yi - yj) * 0.4
            wrapped.append([(xi, yi), (xi + dx, yi + dy)])
            wrapped.append([(xj, yj), (xj - dx, yj - dy)])
        else:
            direct.append([(xi, yi), (xj, yj)])
    return direct, wrapped


def draw_topology(topology: Topology, path: str | Path, title: str = "") -> Path:
    """Save a drawing of the graph (nodes shaded by self weight w_ii) to ``path``; return the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    graph = topology.graph
    positions = node_positions(graph)
    xy = np.array([positions[i] for i in range(topology.nodes)])
    figure = Figure(figsize=(6, 6))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    direct, wrapped = _split_segments(topology, positions)
    ax.add_collection(LineCollection(direct, colors="0.6", linewidths=0.8, zorder=1))
    ax.add_collection(LineCollection(wrapped, colors="0.6", linewidths=0.8, linestyles="dashed", zorder=1))
    self_weights = np.diag(topology.mixing)
    points = ax.scatter(xy[:, 0], xy[:, 1], c=self_weights, cmap="viridis", s=220,
                        edgecolors="black", linewidths=0.5, zorder=2)
    figure.colorbar(points, ax=ax, shrink=0.7, label="self weight w_ii")
    if topology.nodes <= MAX_LABELLED_NODES:
        for i, (x, y) in enumerate(xy):
            red, green, blue, _ = points.to_rgba(self_weights[i])
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
            ax.annotate(str(i), (x, y), ha="center", va="center", fontsize=7,
                        color="white" if dark else "black", zorder=3)
    ax.set_title(title or f"{topology.nodes} nodes, spectral gap {topology.spectral_gap:.4f}")
    ax.set_aspect("equal")
    ax.margins(0.1)
    ax.set_axis_off()
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format="png", dpi=100)
    except OSError as exc:
        raise QtdError(f"cannot write the drawing to --png {shown(str(path))} ({exc.strerror or cut(str(exc))}); "
                       "give a path in a writable directory") from None
    return path
