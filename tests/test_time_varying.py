"""Time-varying topologies (one_peer_exponential, random_matching): the schedule, its checks, its report.

Real runs and the simulator on these topologies are checked against the single-process reference in
tests/test_engine.py and tests/test_sim.py, as every static graph is.
"""

import numpy as np
import pytest

from qtd.config import load_config
from qtd.errors import ConfigError, TopologyError
from qtd.topology import build_topology, check_mixing_matrix
from tests.harness import run_qtd


def _topology(kind: str, nodes: int, *extra: str):
    return build_topology(load_config(None, [f"topology.kind={kind}", f"topology.nodes={nodes}", *extra]).topology)


@pytest.mark.parametrize("nodes", [2, 4, 8, 16, 32])
def test_one_peer_exponential_pairs_i_with_i_plus_or_minus_2_to_the_k_and_averages_in_one_period(nodes):
    topology = _topology("one_peer_exponential", nodes)
    assert topology.period == int(np.log2(nodes))
    for k in range(topology.period):
        w = topology.mixing_at(k)
        check_mixing_matrix(w)  # symmetric, non-negative, doubly stochastic
        for i in range(nodes):
            view = topology.view(i, k)
            peer = i + 2 ** k if (i >> k) & 1 == 0 else i - 2 ** k
            assert view.neighbours == (peer,) and view.self_weight == 0.5 and view.neighbour_weights == (0.5,)
        assert topology.view(0, k + topology.period) == topology.view(0, k)  # periodic
    product = np.eye(nodes)
    for k in range(topology.period):
        product = topology.mixing_at(k) @ product
    np.testing.assert_allclose(product, np.full((nodes, nodes), 1 / nodes), atol=1e-12)  # exact averaging
    assert topology.beta == pytest.approx(0.0, abs=1e-12) and topology.spectral_gap == pytest.approx(1.0)


@pytest.mark.parametrize("nodes", [3, 5, 6, 12, 50])
def test_other_sizes_leave_some_nodes_idle_in_a_round_but_still_contract(nodes):
    topology = _topology("one_peer_exponential", nodes)
    assert topology.period == int(np.ceil(np.log2(nodes)))
    idle = 0
    for k in range(topology.period):
        check_mixing_matrix(topology.mixing_at(k))
        for i in range(nodes):
            view = topology.view(i, k)
            assert len(view.neighbours) <= 1
            if not view.neighbours:
                idle += 1
                assert view.self_weight == 1.0  # a node without a peer keeps its model that round
    assert idle > 0 and 0 < topology.beta < 1


def test_random_matchings_are_seeded_perfect_matchings():
    a = _topology("random_matching", 9, "topology.seed=4", "topology.period=5")
    b = _topology("random_matching", 9, "topology.seed=4", "topology.period=5")
    c = _topology("random_matching", 9, "topology.seed=5", "topology.period=5")
    assert a.period == 5
    assert all(np.array_equal(a.mixing_at(k), b.mixing_at(k)) for k in range(5))  # deterministic
    assert not all(np.array_equal(a.mixing_at(k), c.mixing_at(k)) for k in range(5))
    for k in range(5):
        check_mixing_matrix(a.mixing_at(k))
        degrees = [len(a.view(i, k).neighbours) for i in range(9)]
        assert sorted(degrees) == [0] + [1] * 8  # 9 nodes: four pairs and one idle node
    with pytest.raises(TopologyError, match="never agree; raise topology.period"):
        _topology("random_matching", 6, "topology.period=1")  # one matching never joins its pairs


def test_algorithms_that_keep_per_neighbour_state_refuse_a_time_varying_topology():
    for name in ("async_dsgd", "choco", "quantimed_choco"):
        with pytest.raises(ConfigError, match=r"topology.kind='one_peer_exponential' is not allowed: .*synchronous gossip"):
            load_config(None, ["topology.kind=one_peer_exponential", f"algorithm.name={name}",
                               "compression.bits=16"])
    with pytest.raises(ConfigError, match="topology.period"):
        load_config(None, ["topology.kind=random_matching", "topology.period=0"])


def test_qtd_topology_shows_the_schedule_and_one_periods_contraction():
    result = run_qtd(["topology", "configs/quickstart.yaml", "--set", "topology.kind=one_peer_exponential",
                      "--set", "topology.nodes=6"], timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "period        3 rounds" in result.stdout
    assert [line for line in lines if line.startswith("round")] == [
        "round 0       0-1 2-3 4-5", "round 1       0-2 1-3 4- 5-", "round 2       0-4 1-5 2- 3-"]
    assert "spectral gap  0.500000" in result.stdout
