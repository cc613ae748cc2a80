"""Topology layer: graphs, mixing matrices, their checks, spectral gaps and per-rank views (no process group)."""

import math
import os
import subprocess
import sys
import warnings

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qtd.config import TopologyConfig
from qtd.errors import TopologyError
from qtd.topology import (build_graph, build_topology, check_mixing_matrix, mixing_matrix, spectral_gap,
                          topology_from_graph, torus_shape)

GENERATED_KINDS = ("ring", "torus", "complete", "star", "exponential", "erdos_renyi")
WEIGHTS = ("laplacian", "metropolis")


def assert_valid_mixing(w: np.ndarray, graph: nx.Graph) -> None:
    """The properties the algorithms need, checked here independently of check_mixing_matrix."""
    n = graph.number_of_nodes()
    assert w.shape == (n, n) and w.dtype == np.float64
    np.testing.assert_allclose(w, w.T, atol=1e-12)
    assert (w >= 0).all()
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    for i in range(n):
        for j in range(n):
            if i != j and not graph.has_edge(i, j):
                assert w[i, j] == 0.0
            if graph.has_edge(i, j):
                assert w[i, j] > 0.0


def reference_beta(w: np.ndarray) -> float:
    """Second largest eigenvalue modulus, from the general (non-symmetric) eigen-solver."""
    moduli = np.sort(np.abs(np.linalg.eigvals(w)))[::-1]
    return float(moduli[1]) if len(moduli) > 1 else 0.0


def write_edges(tmp_path, text: str):
    path = tmp_path / "graph.txt"
    path.write_text(text)
    return str(path)


# --- every graph x both weights ----------------------------------------------------------------------

@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("kind", GENERATED_KINDS)
@pytest.mark.parametrize("nodes", [4, 9, 16, 50])
def test_every_kind_and_weights_pass_the_checks(kind, weights, nodes):
    config = TopologyConfig(kind=kind, nodes=nodes, weights=weights, p=0.5)
    topology = build_topology(config)
    assert sorted(topology.graph.nodes) == list(range(nodes)) and topology.nodes == nodes
    assert nx.is_connected(topology.graph)
    assert_valid_mixing(topology.mixing, topology.graph)
    check_mixing_matrix(topology.mixing, topology.graph)
    assert 0 <= topology.beta < 1
    assert topology.beta == pytest.approx(reference_beta(topology.mixing), abs=1e-9)
    assert topology.spectral_gap == pytest.approx(1 - topology.beta)


@pytest.mark.parametrize("weights", WEIGHTS)
def test_edge_list_file_passes_the_checks(tmp_path, weights):
    path = write_edges(tmp_path, "# a 5-node kite\n0 1\n1 2  # trailing comment\n2 0\n\n2 3\n3 4\n1 0\n")
    topology = build_topology(TopologyConfig(kind="file", nodes=5, path=path, weights=weights))
    assert topology.edges == ((0, 1), (0, 2), (1, 2), (2, 3), (3, 4))  # "1 0" repeats "0 1"
    assert_valid_mixing(topology.mixing, topology.graph)


@settings(max_examples=40, deadline=None)
@given(nodes=st.integers(2, 14), p=st.floats(0.05, 1.0), seed=st.integers(0, 10_000),
       weights=st.sampled_from(WEIGHTS))
def test_any_connected_graph_gives_a_valid_mixing_matrix(nodes, p, seed, weights):
    graph = nx.gnp_random_graph(nodes, p, seed=seed)
    graph.add_edges_from((i, i + 1) for i in range(nodes - 1))  # a path makes it connected
    topology = topology_from_graph(graph, weights)
    assert_valid_mixing(topology.mixing, graph)
    assert topology.beta == pytest.approx(reference_beta(topology.mixing), abs=1e-9)
    assert topology.beta < 1


# --- graph shapes --------------------------------------------------------------------------------------

def test_small_rings_have_no_self_loops_or_double_links():
    assert list(build_graph(TopologyConfig(kind="ring", nodes=1)).edges) == []
    assert list(build_graph(TopologyConfig(kind="ring", nodes=2)).edges) == [(0, 1)]
    lone = build_topology(TopologyConfig(kind="ring", nodes=1))
    assert lone.mixing.tolist() == [[1.0]] and (lone.beta, lone.spectral_gap) == (0.0, 1.0)
    pair = build_topology(TopologyConfig(kind="ring", nodes=2))
    np.testing.assert_allclose(pair.mixing, [[2 / 3, 1 / 3], [1 / 3, 2 / 3]])  # kappa = 1 + 2


def test_torus_is_the_most_square_grid_with_wraparound():
    assert [torus_shape(n) for n in (4, 6, 8, 12, 16, 50)] == [(2, 2), (2, 3), (2, 4), (3, 4), (4, 4), (5, 10)]
    graph = build_graph(TopologyConfig(kind="torus", nodes=12))
    assert all(d == 4 for _, d in graph.degree)
    assert graph.has_edge(0, 3) and graph.has_edge(0, 8)  # wrap-around of row 0 and of column 0
    assert all(d == 3 for _, d in build_graph(TopologyConfig(kind="torus", nodes=8)).degree)  # 2 x 4


@pytest.mark.parametrize("nodes", [2, 3, 7, 13])
def test_torus_rejects_sizes_without_a_two_by_two_factorization(nodes):
    with pytest.raises(TopologyError, match=f"topology.nodes={nodes} cannot be laid out as a 2-D torus"):
        build_graph(TopologyConfig(kind="torus", nodes=nodes))


def test_star_and_exponential_graphs():
    star = build_graph(TopologyConfig(kind="star", nodes=6))
    assert sorted(star.edges) == [(0, i) for i in range(1, 6)]
    exponential = build_graph(TopologyConfig(kind="exponential", nodes=8))
    assert sorted(exponential.neighbors(0)) == [1, 2, 4, 6, 7]  # 0 +- 1, 2, 4 (mod 8)
    assert sorted(exponential.neighbors(3)) == [1, 2, 4, 5, 7]
    assert exponential.number_of_edges() == 20


def test_erdos_renyi_is_reproducible_connected_and_seed_dependent():
    def edges(seed):
        return sorted(build_graph(TopologyConfig(kind="erdos_renyi", nodes=30, p=0.15, seed=seed)).edges)

    assert edges(3) == edges(3)
    assert len({tuple(edges(seed)) for seed in range(5)}) == 5
    for seed in range(5):
        graph = build_graph(TopologyConfig(kind="erdos_renyi", nodes=30, p=0.15, seed=seed))
        assert nx.is_connected(graph) and sorted(graph.nodes) == list(range(30))
    assert build_graph(TopologyConfig(kind="erdos_renyi", nodes=6, p=1.0)).number_of_edges() == 15


def test_erdos_renyi_that_never_connects_names_topology_p():
    with pytest.raises(TopologyError, match=r"topology\.p") as info:
        build_graph(TopologyConfig(kind="erdos_renyi", nodes=60, p=0.005))
    assert "no connected" in str(info.value)


# --- known spectra -----------------------------------------------------------------------------------

@pytest.mark.parametrize("nodes", [2, 5, 12])
def test_complete_graph_spectra(nodes):
    metropolis = build_topology(TopologyConfig(kind="complete", nodes=nodes, weights="metropolis"))
    np.testing.assert_allclose(metropolis.mixing, np.full((nodes, nodes), 1 / nodes))  # one step averages
    assert metropolis.beta == pytest.approx(0.0, abs=1e-12) and metropolis.spectral_gap == pytest.approx(1.0)
    laplacian = build_topology(TopologyConfig(kind="complete", nodes=nodes))  # kappa = n + 1
    assert laplacian.beta == pytest.approx(1 / (nodes + 1))


@pytest.mark.parametrize("nodes", [3, 4, 8, 11, 50])
def test_ring_spectra_match_the_closed_form(nodes):
    # L of the n-cycle has eigenvalues 2 - 2cos(2 pi k / n); with kappa = 4, W's are cos^2(pi k / n)
    ring = build_topology(TopologyConfig(kind="ring", nodes=nodes))
    assert ring.beta == pytest.approx(math.cos(math.pi / nodes) ** 2)
    assert ring.spectral_gap == pytest.approx(math.sin(math.pi / nodes) ** 2)
    k = np.arange(1, nodes)
    custom = build_topology(TopologyConfig(kind="ring", nodes=nodes, kappa=3.0))
    expected = np.abs(1 - (2 - 2 * np.cos(2 * np.pi * k / nodes)) / 3.0).max()
    assert custom.beta == pytest.approx(expected)
    metropolis = build_topology(TopologyConfig(kind="ring", nodes=nodes, weights="metropolis"))
    assert metropolis.beta == pytest.approx(np.abs((1 + 2 * np.cos(2 * np.pi * k / nodes)) / 3).max())


def test_torus_and_star_spectra_match_the_closed_form():
    # L of C_r x C_c has eigenvalues (2 - 2cos(2 pi a / r)) + (2 - 2cos(2 pi b / c)); kappa = 4 + 2
    a, b = np.meshgrid(np.arange(3), np.arange(4), indexing="ij")
    eig = 1 - ((2 - 2 * np.cos(2 * np.pi * a / 3)) + (2 - 2 * np.cos(2 * np.pi * b / 4))) / 6
    second = np.sort(np.abs(eig.ravel()))[-2]
    assert build_topology(TopologyConfig(kind="torus", nodes=12)).beta == pytest.approx(second)
    # star: L has eigenvalues 0, 1 (n - 2 times), n; kappa = n + 1 gives beta = n / (n + 1)
    assert build_topology(TopologyConfig(kind="star", nodes=9)).beta == pytest.approx(9 / 10)


def test_spectral_gap_of_a_hand_made_matrix():
    w = np.array([[0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]])  # eigenvalues 1, 0.5, -0.5
    assert spectral_gap(w) == pytest.approx((0.5, 0.5))
    flip = np.array([[0.0, 1.0], [1.0, 0.0]])  # eigenvalue -1: never converges
    assert spectral_gap(flip) == pytest.approx((1.0, 0.0))
    assert spectral_gap(np.ones((1, 1))) == (0.0, 1.0)


# --- kappa -------------------------------------------------------------------------------------------

def test_kappa_below_the_max_degree_is_rejected_naming_topology_kappa():
    with pytest.raises(TopologyError, match=r"topology\.kappa=2\.5 .*negative self weights") as info:
        build_topology(TopologyConfig(kind="star", nodes=4, kappa=2.5))  # hub degree 3
    assert "topology.kappa > 3 (the max degree)" in str(info.value) and "null" in str(info.value)


def test_kappa_at_half_lambda_max_is_rejected_as_not_convergent():
    # even ring: lambda_max(L) = 4 = 2 * max degree, so kappa = 2 gives eigenvalue -1
    with pytest.raises(TopologyError, match=r"topology\.kappa=2 .*does not converge"):
        mixing_matrix(build_graph(TopologyConfig(kind="ring", nodes=8)), "laplacian", kappa=2.0)
    # odd ring: lambda_max(L) < 4, so kappa = max degree = 2 is non-negative and converges
    odd = build_topology(TopologyConfig(kind="ring", nodes=7, kappa=2.0))
    assert np.diag(odd.mixing) == pytest.approx(np.zeros(7)) and odd.beta < 1


def test_kappa_is_ignored_with_a_warning_for_metropolis_weights():
    graph = build_graph(TopologyConfig(kind="ring", nodes=5))
    with pytest.warns(UserWarning, match=r"topology\.kappa=7 is ignored"):
        w = mixing_matrix(graph, "metropolis", kappa=7.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(w, mixing_matrix(graph, "metropolis"))
    with pytest.raises(TopologyError, match=r"topology\.weights='uniform'"):
        mixing_matrix(graph, "uniform")


# --- checks reject bad matrices and graphs -----------------------------------------------------------

@pytest.fixture
def path3():
    graph = nx.path_graph(3)
    return graph, mixing_matrix(graph, "metropolis")


def test_check_accepts_a_valid_matrix(path3):
    graph, w = path3
    check_mixing_matrix(w, graph)
    check_mixing_matrix(w)


def test_check_rejects_an_asymmetric_matrix(path3):
    graph, w = path3
    w = w.copy()
    w[0, 1] += 0.1
    w[0, 0] -= 0.1  # rows still sum to 1
    with pytest.raises(TopologyError, match=r"not symmetric: W\[0,1\]"):
        check_mixing_matrix(w, graph)


def test_check_rejects_a_negative_matrix():
    w = np.array([[-0.5, 1.5], [1.5, -0.5]])  # symmetric and doubly stochastic
    with pytest.raises(TopologyError, match=r"negative entry W\[0,0\]=-0\.5.*topology\.kappa"):
        check_mixing_matrix(w)


def test_check_rejects_a_matrix_that_is_not_doubly_stochastic(path3):
    graph, w = path3
    with pytest.raises(TopologyError, match=r"not doubly stochastic: row \d sums to 0\.9"):
        check_mixing_matrix(0.9 * w, graph)


def test_check_rejects_weight_between_non_neighbours(path3):
    graph, _ = path3
    w = np.full((3, 3), 1 / 3)  # valid for the triangle, not for the path 0-1-2
    check_mixing_matrix(w)
    with pytest.raises(TopologyError, match=r"W\[0,2\]=0\.333333 but nodes 0 and 2 are not neighbours"):
        check_mixing_matrix(w, graph)


@pytest.mark.parametrize("w, match", [
    (np.ones((2, 3)) / 3, "square"),
    (np.zeros((0, 0)), "square"),
    (np.array([[np.nan, 1.0], [1.0, 0.0]]), "non-finite"),
])
def test_check_rejects_malformed_matrices(w, match):
    with pytest.raises(TopologyError, match=match):
        check_mixing_matrix(w)


def test_check_rejects_a_size_mismatch(path3):
    _, w = path3
    with pytest.raises(TopologyError, match="3 x 3 but the graph has 4 nodes"):
        check_mixing_matrix(w, nx.path_graph(4))


def test_disconnected_graph_is_rejected():
    graph = nx.Graph([(0, 1), (2, 3), (3, 4)])
    with pytest.raises(TopologyError, match=r"disconnected \(2 components\): nodes 2, 3, 4 cannot reach node 0"):
        topology_from_graph(graph)


def test_graph_with_foreign_node_labels_is_rejected():
    with pytest.raises(TopologyError, match=r"graph nodes must be 0\.\.1"):
        mixing_matrix(nx.Graph([("a", "b")]))


# --- edge-list files ---------------------------------------------------------------------------------

def test_disconnected_file_graph_is_rejected_naming_the_path(tmp_path):
    path = write_edges(tmp_path, "0 1\n2 3\n")
    with pytest.raises(TopologyError, match=r"disconnected.*nodes 2, 3 cannot reach node 0.*topology\.path="):
        build_topology(TopologyConfig(kind="file", nodes=4, path=path))


@pytest.mark.parametrize("text, nodes, match", [
    ("0 1\n1 4\n", 4, r"line 2: node id 4 is out of range 0\.\.3 for topology\.nodes=4"),
    ("0 1\n1 -1\n", 4, r"line 2: node id -1 is out of range"),
    ("0 1\n1 x\n", 4, r"line 2: node id 'x' is not an integer"),
    ("# header\n0 1 0.5\n", 2, r"line 2: expected two node ids 'i j', got '0 1 0\.5'"),
    ("0 1\n1 1\n", 2, r"line 2: self-loop 1 1"),
    ("0 1\n1 2\n", 5, r"nodes 3, 4 appear in no edge, but topology\.nodes=5; set topology\.nodes"),
    ("", 3, r"nodes 0, 1, 2 appear in no edge"),
])
def test_bad_edge_list_files_give_clear_errors(tmp_path, text, nodes, match):
    path = write_edges(tmp_path, text)
    with pytest.raises(TopologyError, match=match) as info:
        build_graph(TopologyConfig(kind="file", nodes=nodes, path=path))
    assert "topology.path=" in str(info.value)


def test_missing_edge_list_file(tmp_path):
    with pytest.raises(TopologyError, match=r"topology\.path=.*does not exist"):
        build_graph(TopologyConfig(kind="file", nodes=3, path=str(tmp_path / "missing.txt")))


def test_single_node_file_graph_may_be_empty(tmp_path):
    topology = build_topology(TopologyConfig(kind="file", nodes=1, path=write_edges(tmp_path, "# alone\n")))
    assert topology.mixing.tolist() == [[1.0]]


# --- per-rank views ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, weights", [("star", "laplacian"), ("erdos_renyi", "metropolis"),
                                           ("exponential", "laplacian"), ("torus", "metropolis")])
def test_node_views_match_w_and_sum_to_one(kind, weights):
    topology = build_topology(TopologyConfig(kind=kind, nodes=12, weights=weights, p=0.3, seed=1))
    for rank in range(topology.nodes):
        view = topology.view(rank)
        assert view.rank == rank
        assert view.neighbours == tuple(sorted(topology.graph.neighbors(rank)))
        assert view.self_weight == topology.mixing[rank, rank]
        assert view.neighbour_weights == tuple(topology.mixing[rank, j] for j in view.neighbours)
        assert view.self_weight + sum(view.neighbour_weights) == pytest.approx(1.0, abs=1e-12)
        assert all(w > 0 for w in view.neighbour_weights)
    with pytest.raises(TopologyError, match="rank 12 is not a node"):
        topology.view(12)


def test_topology_is_read_only_and_lists_edges_once():
    topology = build_topology(TopologyConfig(kind="ring", nodes=4))
    assert topology.edges == ((0, 1), (0, 3), (1, 2), (2, 3))
    with pytest.raises(ValueError):
        topology.mixing[0, 0] = 2.0


def test_topology_layer_never_imports_torch():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = "import sys, qtd.topology, qtd.topology.cli; sys.exit('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": root}, timeout=60)
    assert result.returncode == 0
