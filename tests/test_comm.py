"""Neighbour exchange with real gloo processes, checked against single-process encodings."""


import pytest
import torch

from qtd.compress import encode_message, message_nbytes
from qtd.config import TopologyConfig
from qtd.topology import build_topology
from tests.harness import run_ranks
from tests.workers import _model

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kind, world_size, bits", [("ring", 4, 3), ("exponential", 8, 16), ("complete", 4, 32)])
def test_every_node_receives_exactly_its_neighbours_encoded_models(tmp_path, kind, world_size, bits):
    numel, iterations = 1001, 3
    run_ranks("tests.workers:exchange_worker", world_size, tmp_path,
              {"kind": kind, "numel": numel, "bits": bits, "iterations": iterations}, timeout=120)
    topology = build_topology(TopologyConfig(kind=kind, nodes=world_size))
    nbytes = message_nbytes(numel, bits)
    for rank in range(world_size):
        result = torch.load(tmp_path / f"rank{rank}.out", weights_only=True)
        neighbours = topology.view(rank).neighbours
        assert sorted(result["neighbours"]) == sorted(neighbours)
        for iteration in range(iterations):
            assert sorted(result["received"][iteration]) == sorted(neighbours)
            for j in neighbours:
                expected = encode_message(_model(j, numel) + iteration, bits, j, iteration, seed=7)
                assert torch.equal(result["received"][iteration][j], expected), (rank, j, iteration)
        assert result["sent_per_edge"] == {j: iterations * nbytes for j in neighbours}


def test_emulated_link_latency_delays_the_exchange(tmp_path):
    run_ranks("tests.workers:exchange_worker", 4, tmp_path,
              {"kind": "ring", "numel": 100, "bits": 8, "iterations": 5, "latency_s": 0.1}, timeout=120)
    for rank in range(4):
        assert torch.load(tmp_path / f"rank{rank}.out", weights_only=True)["elapsed"] >= 5 * 0.1 - 0.02


@pytest.mark.parametrize("how", ["die", "stall"])
def test_a_dead_or_stalled_peer_ends_every_node_with_a_message(tmp_path, how):
    timeout_s = 3.0
    # bounded, not a hang: run_ranks fails the test if any process is still running after 90 s (the victim
    # of "stall" leaves after 3 x timeout_s; the others within about timeout_s of it stalling)
    results = run_ranks("tests.workers:failing_peer_worker", 4, tmp_path,
                        {"victim": 2, "how": how, "timeout_s": timeout_s}, timeout=90, expect_ok=False)
    for rank in (1, 3):  # the victim's neighbours name it
        assert results[rank].returncode == 1
        message = (tmp_path / f"rank{rank}.out").read_text()
        assert "node 2" in message, message
    assert results[0].returncode == 1 and (tmp_path / "rank0.out").exists()
