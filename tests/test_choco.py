"""CHOCO-SGD's compressed-difference gossip (choco, quantimed_choco): hand-computed steps, the compact public
copies against the paper's per-neighbour bookkeeping, consensus at 2 bits, config checks and resume.

The real engine and the simulator are checked against tests/reference.py (per-neighbour copies written out)
in tests/test_engine.py and tests/test_sim.py, as the other algorithms are.
"""

import json
import shutil

import pytest
import torch
from torch.testing import assert_close

from qtd.algorithms import PublicCopies, consensus_error, get_spec, mix_neighbours, mix_stack
from qtd.algorithms.schedules import StepSizes
from qtd.compress import decode_message, encode_message
from qtd.config import load_config
from qtd.errors import ConfigError
from qtd.topology import build_topology
from tests.harness import run_qtd


def _triangle_step(x, copies, w, grads, sizes, spec):
    """One iteration of three fully connected nodes (w_ij = 1/3), exact 32-bit messages."""
    q = [encode_message(copies[i].difference(x[i]), 32, i, 0) for i in range(3)]
    q = [decode_message(m)[1] for m in q]
    new = []
    for i in range(3):
        mixed = mix_neighbours(((q[j], w) for j in range(3) if j != i), out=torch.empty(1))
        copies[i].receive(q[i], mixed)
        new.append(spec.update(x[i], copies[i].direction(), w, grads[i], sizes))
    return new


def test_two_hand_computed_choco_steps_on_a_triangle():
    """x = (1, 2, 4), g = (1, 0, -1), alpha 0.1, gamma 0.5, w_ij = 1/3. Iteration 1: every x̂_i becomes x_i,
    the directions are 1/3 sum_j (x̂_j - x̂_i) = (4/3, 1/3, -5/3), so x = (1 - 0.1 + 2/3, 2 + 1/6, 4 + 0.1 - 5/6)
    = (1.5667, 2.1667, 3.2667). Iteration 2: the directions (0.7667, 0.1667, -0.9333) give (1.85, 2.25, 2.9)."""
    spec, w = get_spec("choco"), 1 / 3
    sizes = spec.step_sizes("constant", 0.1, 1.0, 10, gamma=0.5)
    assert (sizes.alpha, sizes.gamma) == (0.1, 0.5)
    x = [torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([4.0])]
    grads = [torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([-1.0])]
    copies = [PublicCopies(x[i], w) for i in range(3)]
    x = _triangle_step(x, copies, w, grads, sizes, spec)
    assert_close(torch.cat(x), torch.tensor([1.5 + 1 / 15, 2 + 1 / 6, 3.2 + 1 / 15]))
    assert_close(torch.cat([c.own for c in copies]), torch.tensor([1.0, 2.0, 4.0]))
    x = _triangle_step(x, copies, w, grads, sizes, spec)
    assert_close(torch.cat(x), torch.tensor([1.85, 2.25, 2.9]))
    assert_close(sum(x), torch.tensor([7.0]))  # symmetric W and gradients summing to 0: the mean stays


def test_compact_copies_equal_the_per_neighbour_copies_and_reach_consensus_at_two_bits():
    """Pure gossip (no gradient) on a ring of 6 with 2-bit messages: qtd's two tensors per node (x̂_i and
    sum_j w_ij x̂_j) follow the paper's per-neighbour copies, the mean model stays, and the consensus error
    falls more than 10^4-fold, while the same gossip of quantized models (QuanTimed's) stalls at its
    rounding noise."""
    n, p = 6, 500
    topology = build_topology(load_config(None, ["topology.kind=ring", f"topology.nodes={n}"]).topology)
    views = [topology.view(i) for i in range(n)]
    torch.manual_seed(0)
    start = torch.randn(n, p) * 3
    choco, quantimed = get_spec("choco"), get_spec("quantimed")
    sizes = choco.step_sizes("constant", 0.1, 1.0, 10, gamma=0.4)
    x = start.clone()
    compact = [PublicCopies(x[i], views[i].self_weight) for i in range(n)]
    paper = [{j: torch.zeros(p) for j in (i, *views[i].neighbours)} for i in range(n)]
    zero = torch.zeros(p)
    for t in range(300):
        q = [decode_message(encode_message(compact[i].difference(x[i]), 2, i, t, seed=3))[1] for i in range(n)]
        new = []
        for i, view in enumerate(views):
            compact[i].receive(q[i], mix_neighbours(zip((q[j] for j in view.neighbours), view.neighbour_weights),
                                                    out=torch.empty(p)))
            for j in paper[i]:
                paper[i][j] += q[j]
            by_hand = sum(w * (paper[i][j] - paper[i][i]) for j, w in zip(view.neighbours, view.neighbour_weights))
            assert_close(compact[i].direction(), by_hand, rtol=1e-4, atol=1e-4)
            new.append(choco.update(x[i], compact[i].direction(), view.self_weight, zero, sizes))
        x = torch.stack(new)
    assert_close(x.mean(dim=0), start.mean(dim=0), rtol=1e-3, atol=1e-3)
    assert consensus_error(x) < 1e-4 * consensus_error(start), consensus_error(x)

    mixing = torch.tensor(topology.mixing, dtype=torch.float32)
    w_self = mixing.diagonal().clone()
    neighbours = mixing - torch.diag(w_self)
    z = start.clone()
    q_sizes = quantimed.step_sizes("constant", 0.1, 0.4, 10)
    for t in range(300):
        decoded = torch.stack([decode_message(encode_message(z[i], 2, i, t, seed=3))[1] for i in range(n)])
        z = quantimed.update(z, mix_stack(neighbours, decoded), w_self, torch.zeros_like(z), q_sizes)
    assert consensus_error(z) > 100 * consensus_error(x)


def test_gamma_is_checked_and_only_difference_gossip_uses_it():
    for bad in ("0", "1.5", "-0.1"):
        with pytest.raises(ConfigError, match=r"algorithm.gamma=.*consensus step must be in \(0, 1\]"):
            load_config(None, ["algorithm.name=choco", f"algorithm.gamma={bad}"])
    with pytest.raises(ConfigError, match="algorithm.gamma"):
        load_config(None, ["algorithm.name=choco", "algorithm.gamma=fast"])
    assert get_spec("quantimed_choco").step_sizes("constant", 0.2, 0.5, 4, gamma=0.25) == StepSizes(0.2, 1.0, 0.25)
    assert get_spec("quantimed").step_sizes("constant", 0.2, 0.5, 4, gamma=0.25) == StepSizes(0.2, 0.5, 1.0)
    assert get_spec("quantimed_choco").deadline_bound and not get_spec("choco").deadline_bound
    config = load_config(None, ["algorithm.name=choco", "compression.bits=1"])  # 1 bit works on differences
    assert config.compression.bits == 1


def _launch(out, *overrides):
    args = ["launch", "configs/quickstart.yaml", "--set", f"run.out_dir={out}"]
    for override in ("run.progress=false", "topology.nodes=4", "algorithm.name=choco", "compression.bits=2",
                     "algorithm.gamma=0.4", "run.iterations=8", "run.checkpoint_every=4", "run.eval_every=4",
                     *overrides):
        args += ["--set", override]
    return run_qtd(args, timeout=240)


@pytest.mark.slow
def test_a_resumed_choco_run_ends_where_an_uninterrupted_one_ends(tmp_path):
    """The public copies are part of the checkpoint: without them a resumed node would send x_i - 0 against
    copies its neighbours hold, and the models would not match."""
    whole = tmp_path / "whole"
    result = _launch(whole)
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(whole / "checkpoints" / "iter_00000004" / "node_001.pt", weights_only=True)
    assert {"public_copy", "public_neighbours"} <= set(state["algorithm"]), list(state["algorithm"])
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "checkpoints" / "iter_00000008")  # as if the run had died after iteration 4's checkpoint
    (cut / "summary.json").unlink()
    result = _launch(cut)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "qtd: resuming from the checkpoint at iteration 4" in result.stderr, result.stderr[-3000:]
    for rank in range(4):
        got = torch.load(cut / "checkpoints" / "iter_00000008" / f"node_{rank:03d}.pt", weights_only=True)
        want = torch.load(whole / "checkpoints" / "iter_00000008" / f"node_{rank:03d}.pt", weights_only=True)
        assert torch.equal(got["params"], want["params"]), rank
    assert json.loads((cut / "summary.json").read_text())["eval_loss"] == pytest.approx(
        json.loads((whole / "summary.json").read_text())["eval_loss"], rel=1e-6)


@pytest.mark.parametrize("kind, k_ratio", [("topk", 0.05), ("sign", 0.0)])
def test_topk_and_sign_differences_also_reach_consensus(kind, k_ratio):
    """CHOCO with a biased compressor (TopK of 5% of the elements, or mean |d| * sign(d)): pure gossip on a
    ring of 6 still converges to the preserved mean, since each difference carries the last one's error."""
    from qtd.compress.message_codec import difference_codec

    n, p = 6, 400
    topology = build_topology(load_config(None, ["topology.kind=ring", f"topology.nodes={n}"]).topology)
    views = [topology.view(i) for i in range(n)]
    torch.manual_seed(1)
    start = torch.randn(n, p)
    x = start.clone()
    codec = difference_codec(kind, x[0], 32, k_ratio or 0.01, seed=0)
    assert codec.message_nbytes < p * 4 // 4  # under a quarter of a float32 copy
    copies = [PublicCopies(x[i], views[i].self_weight) for i in range(n)]
    spec = get_spec("choco")
    sizes = spec.step_sizes("constant", 0.1, 1.0, 10, gamma=0.2)
    message = torch.empty(codec.message_nbytes, dtype=torch.uint8)
    for t in range(1500):
        q = []
        for i in range(n):
            codec.encode(copies[i].difference(x[i]), i, t, out=message)
            q.append(codec.decode(message, i, t, out=torch.empty(p)))
        x = torch.stack([_receive_and_step(copies[i], views[i], q, x[i], spec, sizes) for i in range(n)])
    assert_close(x.mean(dim=0), start.mean(dim=0), rtol=1e-3, atol=1e-3)
    assert consensus_error(x) < 1e-3 * consensus_error(start), consensus_error(x)


def _receive_and_step(copies, view, q, x, spec, sizes):
    copies.receive(q[view.rank], mix_neighbours(zip((q[j] for j in view.neighbours), view.neighbour_weights),
                                                out=torch.empty_like(x)))
    return spec.update(x, copies.direction(), view.self_weight, torch.zeros_like(x), sizes)


def test_differences_other_than_the_grid_are_for_choco_only():
    with pytest.raises(ConfigError, match="compression.differences='topk' is not allowed: TopK and sign compress"):
        load_config(None, ["algorithm.name=qdsgd", "compression.differences=topk"])
    with pytest.raises(ConfigError, match="compression.k_ratio"):
        load_config(None, ["algorithm.name=choco", "compression.differences=topk", "compression.k_ratio=0"])
    assert load_config(None, ["algorithm.name=quantimed_choco", "compression.differences=sign"]).compression.differences == "sign"
