"""Mixing matrices W of a graph, their checks, and the spectral gap.

W is what one round of neighbour averaging multiplies the stacked models by. The algorithms need W
symmetric, non-negative, doubly stochastic and zero off the edges; the speed at which the nodes agree
is governed by beta = max(|lambda_2(W)|, |lambda_n(W)|) < 1, and 1 - beta is the spectral gap.
"""

from __future__ import annotations

import warnings

import networkx as nx
import numpy as np

from ..errors import TopologyError
from ..echo import shown

WEIGHTS = ("laplacian", "metropolis")
ATOL = 1e-9  # tolerance of the checks: far above float64 round-off for n in the thousands


def adjacency(graph: nx.Graph) -> np.ndarray:
    """The 0/1 adjacency matrix of a graph on nodes 0..n-1 (float64, symmetric, zero diagonal)."""
    n = graph.number_of_nodes()
    if set(graph.nodes) != set(range(n)):
        raise TopologyError(f"graph nodes must be 0..{n - 1}, got {sorted(graph.nodes, key=str)[:10]}; "
                            "relabel them, e.g. with networkx.convert_node_labels_to_integers")
    a = np.zeros((n, n))
    for i, j in graph.edges:
        if i == j:
            raise TopologyError(f"the graph has a self-loop on node {i}; remove it (the mixing matrix supplies "
                                "the self weight w_ii)")
        a[i, j] = a[j, i] = 1.0
    return a


def default_kappa(graph: nx.Graph) -> float:
    """The paper's kappa = max degree + 2, which keeps W = I - L/kappa positive on the diagonal."""
    return float(max((d for _, d in graph.degree), default=0) + 2)


def laplacian_weights(a: np.ndarray, kappa: float) -> np.ndarray:
    """W = I - L/kappa with L = D - A the graph Laplacian.

    W is symmetric with rows summing to 1 for any kappa; it is non-negative iff kappa >= max degree and
    converges (lambda_n(W) = 1 - lambda_max(L)/kappa > -1) iff kappa > lambda_max(L)/2. Both are
    checked here so the error can name topology.kappa. Since lambda_max(L) <= 2 * max degree, the two
    reduce to kappa > max degree, or kappa = max degree on a graph with lambda_max(L) < 2 * max degree
    (an odd ring, say); only that borderline case needs the eigenvalue.
    """
    degrees = a.sum(axis=1)
    laplacian = np.diag(degrees) - a
    max_degree = float(degrees.max(initial=0.0))
    if kappa < max_degree - ATOL:
        problem = "has negative self weights (1 - degree/kappa < 0)"
    elif kappa > max_degree + ATOL:
        problem = ""
    else:
        lambda_max = float(np.linalg.eigvalsh(laplacian)[-1])
        problem = "" if kappa > lambda_max / 2 * (1 + ATOL) else (
            "does not converge (lambda_n(W) = 1 - lambda_max(L)/kappa <= -1)")
    if problem:
        raise TopologyError(
            f"topology.kappa={kappa:g} is too small for this graph: W = I - L/kappa {problem}; use "
            f"topology.kappa > {max_degree:g} (the max degree), e.g. {max_degree + 2:g}, or leave it null "
            "for max degree + 2")
    return np.eye(len(a)) - laplacian / kappa


def metropolis_weights(a: np.ndarray) -> np.ndarray:
    """Metropolis-Hastings: w_ij = 1/(1 + max(d_i, d_j)) on edges, w_ii = 1 - sum_j w_ij (always > 0)."""
    degrees = a.sum(axis=1)
    w = a / (1.0 + np.maximum.outer(degrees, degrees))
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
    return w


def mixing_matrix(graph: nx.Graph, weights: str = "laplacian", kappa: float | None = None) -> np.ndarray:
    """The n x n float64 mixing matrix of ``graph`` (nodes 0..n-1) with the chosen weights.

    ``kappa`` applies to laplacian weights only (None: max degree + 2); it is ignored, with a warning,
    for metropolis weights.
    """
    a = adjacency(graph)
    if weights == "laplacian":
        return laplacian_weights(a, default_kappa(graph) if kappa is None else float(kappa))
    if weights == "metropolis":
        if kappa is not None:
            warnings.warn(f"topology.kappa={kappa:g} is ignored with topology.weights=metropolis; it only "
                          "scales laplacian weights", stacklevel=2)
        return metropolis_weights(a)
    raise TopologyError(f"topology.weights={shown(weights)} is not allowed: choose one of {', '.join(WEIGHTS)}")


def check_mixing_matrix(w: np.ndarray, graph: nx.Graph | None = None) -> None:
    """TopologyError unless W is square, finite, symmetric, non-negative and doubly stochastic, and
    (when ``graph`` is given) n x n for its n nodes and zero between nodes that are not neighbours."""
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[0] == 0:
        raise TopologyError(f"the mixing matrix must be a non-empty square n x n matrix, got shape {w.shape}")
    n = w.shape[0]
    if not np.isfinite(w).all():
        i, j = np.argwhere(~np.isfinite(w))[0]
        raise TopologyError(f"the mixing matrix has a non-finite entry W[{i},{j}]={w[i, j]}")
    asymmetry = np.abs(w - w.T)
    if asymmetry.max() > ATOL:
        i, j = np.unravel_index(asymmetry.argmax(), w.shape)
        raise TopologyError(f"the mixing matrix is not symmetric: W[{i},{j}]={w[i, j]:.6g} but W[{j},{i}]="
                            f"{w[j, i]:.6g}; node {i} must weigh node {j} as much as {j} weighs {i}")
    if w.min() < -ATOL:
        i, j = np.unravel_index(w.argmin(), w.shape)
        raise TopologyError(f"the mixing matrix has a negative entry W[{i},{j}]={w[i, j]:.6g}; weights must be "
                            ">= 0 (with topology.weights=laplacian, raise topology.kappa)")
    for axis, name in ((1, "row"), (0, "column")):
        sums = w.sum(axis=axis)
        worst = int(np.abs(sums - 1.0).argmax())
        if abs(sums[worst] - 1.0) > ATOL:
            raise TopologyError(f"the mixing matrix is not doubly stochastic: {name} {worst} sums to "
                                f"{sums[worst]:.6g}, not 1, so averaging would not preserve the mean model")
    if graph is not None:
        if graph.number_of_nodes() != n:
            raise TopologyError(f"the mixing matrix is {n} x {n} but the graph has {graph.number_of_nodes()} nodes")
        off_edges = (adjacency(graph) + np.eye(n)) == 0
        stray = np.abs(np.where(off_edges, w, 0.0))
        if stray.max(initial=0.0) > ATOL:
            i, j = np.unravel_index(stray.argmax(), w.shape)
            raise TopologyError(f"the mixing matrix has W[{i},{j}]={w[i, j]:.6g} but nodes {i} and {j} are not "
                                "neighbours; W must be zero off the graph's edges")


def spectral_gap(w: np.ndarray) -> tuple[float, float]:
    """(beta, 1 - beta) with beta = max(|lambda_2|, |lambda_n|) of a symmetric W (eigenvalues sorted
    descending, lambda_1 = 1). A 1 x 1 W has no second eigenvalue: beta = 0, as one node is already in
    consensus."""
    w = np.asarray(w, dtype=np.float64)
    if len(w) < 2:
        return 0.0, 1.0
    eigenvalues = np.linalg.eigvalsh(w)  # ascending
    beta = float(max(abs(eigenvalues[-2]), abs(eigenvalues[0])))
    return beta, 1.0 - beta
