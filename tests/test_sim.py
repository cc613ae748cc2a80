"""The virtual-time simulator: its clock, sample counts, async event order, outputs, and agreement with real runs."""

import json
import math
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from qtd.algorithms import get_spec
from qtd.compress import decode_message, encode_message
from qtd.config import load_config
from qtd.deadline import SpeedModel
from qtd.sim import simulate
from qtd.sim.messages import MessageCodec
from qtd.sim.stack import LoopGradients, StackedGradients, micro_batches
from qtd.metrics import read_jsonl
from tests.harness import REPO, run_qtd
from tests.sim_reference import expected_events, reference_async_models

SMALL = ["topology.kind=ring", "topology.nodes=4", "data.name=synthetic", "model.hidden=[16]",
         "run.eval_every=2", "run.progress=false", "algorithm.batch_size=8"]
BITS = {"quantimed": 5, "qdsgd": 3, "dsgd": 16, "allreduce_sgd": 32, "async_dsgd": 16, "choco": 2, "quantimed_choco": 2}
SPEEDS = [10.0, 20.0, 40.0, 80.0]


def small_config(tmp_path: Path, *overrides: str):
    return load_config(REPO / "configs" / "quickstart.yaml", [*SMALL, f"run.out_dir={tmp_path / 'sim'}", *overrides])


def fixed_speeds(speeds=SPEEDS) -> list[str]:
    return ["emulation.speed_distribution=fixed", f"emulation.speeds={list(speeds)}"]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_simulated_messages_are_the_wire_messages_bit_for_bit(device):
    torch.manual_seed(0)
    models = torch.randn(3, 1001) * torch.tensor([[1.0], [5.0], [0.01]])
    on_device = models.to(device)  # the simulator's stack on its device; the wire messages on the CPU
    for bits in (2, 4, 8, 16, 32):
        codec = MessageCodec(models.shape[1], bits, seed=7, device=torch.device(device))
        stacked = codec.all(on_device, iteration=11, out=torch.empty_like(on_device)).cpu()
        for i in range(3):
            wire = decode_message(encode_message(models[i], bits, i, 11, seed=7))[1]
            assert torch.equal(stacked[i], wire), bits
            node = codec.node(on_device[i], i, 11, out=torch.empty(1001, device=device))
            assert torch.equal(node.cpu(), wire), bits


def test_stacked_gradients_match_the_real_per_node_micro_batch_loop(tmp_path):
    config = small_config(tmp_path)
    from qtd.engine.problem import build_problem
    problem = build_problem(config)
    n, cpu = 4, torch.device("cpu")
    stacked = StackedGradients(problem.template, problem.splits.train,
                               [problem.node_sampler(i, 0) for i in range(n)], cpu)
    loop = LoopGradients(problem.template, [problem.node_sampler(i, 0) for i in range(n)], cpu)
    torch.manual_seed(1)
    models = torch.randn(n, stacked.numel) * 0.3
    for counts in ([7, 0, 13, 1], [5, 5, 5, 5], [0, 0, 0, 0]):  # partial micro-batches, idle nodes
        got, got_loss = stacked(models, counts, 4)
        want, want_loss = loop(models, counts, 4)
        assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-5)
    assert micro_batches(13, 4) == [4, 4, 4, 1] and micro_batches(0, 4) == []


def _per_iteration_s(algorithm: str, config, speeds: list[float], numel: int, overlap: bool) -> float:
    """The paper's time model, written out for this test (the README's qtd sim table)."""
    emu, algo, n = config.emulation, config.algorithm, config.topology.nodes
    message = emu.link_latency_s + emu.comm_time_s * config.compression.bits / 16
    compute = algo.deadline_s if algorithm == "quantimed" else max(algo.batch_size / v for v in speeds)
    if algorithm == "allreduce_sgd":  # ring: 2(n-1) messages of 4p/n bytes on links carrying 2p bytes per T_c
        comm = 2 * (n - 1) * (emu.link_latency_s + emu.comm_time_s * (4 * numel // n) / (2 * numel))
    else:
        comm = message
    return max(compute, comm) if overlap else compute + comm


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("algorithm", ["quantimed", "qdsgd", "dsgd", "allreduce_sgd"])
def test_virtual_time_is_the_papers_formula_for_known_speeds(tmp_path, algorithm, overlap):
    config = small_config(tmp_path, f"algorithm.name={algorithm}", f"compression.bits={BITS[algorithm]}",
                          "run.iterations=5", f"algorithm.overlap={str(overlap).lower()}",
                          "algorithm.deadline_s=0.35", "emulation.comm_time_s=2.0",
                          "emulation.link_latency_s=0.01", *fixed_speeds())
    result = simulate(config, write=False)
    per = _per_iteration_s(algorithm, config, SPEEDS, result.models.shape[1], overlap)
    assert [row["iteration"] for row in result.rows] == [2, 4, 5]
    for row in result.rows:
        assert row["time_s"] == pytest.approx(row["iteration"] * per, rel=1e-12)
    assert result.summary["time_s"] == pytest.approx(5 * per, rel=1e-12)


def test_virtual_time_follows_each_iterations_slowest_node(tmp_path):
    config = small_config(tmp_path, "algorithm.name=qdsgd", "compression.bits=4", "run.iterations=6",
                          "algorithm.overlap=false", "emulation.comm_time_s=3.0", "run.seed=5")
    result = simulate(config, write=False)
    speeds = SpeedModel("uniform", 10.0, 90.0, (), seed=5)
    expected = sum(max(8 / speeds.speed(i, t) for i in range(4)) + 3.0 * 4 / 16 for t in range(6))
    assert result.summary["time_s"] == pytest.approx(expected, rel=1e-12)


def test_deadline_bound_nodes_compute_floor_of_speed_times_deadline(tmp_path):
    config = small_config(tmp_path, "algorithm.name=quantimed", "compression.bits=4", "run.iterations=5",
                          "algorithm.deadline_s=0.25", "algorithm.micro_batch_size=3", "run.seed=3")
    result = simulate(config, node_logs=True)
    speeds = SpeedModel("uniform", 10.0, 90.0, (), seed=3)
    expected = [[math.floor(speeds.speed(i, t) * 0.25) for t in range(5)] for i in range(4)]
    assert result.samples == expected
    assert any(c % 3 for row in expected for c in row)  # some iterations end with a partial micro-batch
    for i in range(4):
        log = read_jsonl(Path(config.run.out_dir) / "nodes" / f"node_{i:03d}.jsonl")
        assert [row["samples"] for row in log] == expected[i]
        assert [row["speed"] for row in log] == [speeds.speed(i, t) for t in range(5)]
    summary = result.summary
    assert summary["samples_per_iteration"] == [round(sum(r) / 5, 3) for r in expected]
    assert summary["micro_batches_per_iteration"] == [round(sum(math.ceil(c / 3) for c in r) / 5, 3)
                                                      for r in expected]


@pytest.mark.parametrize("bits", [16, 4])
def test_async_events_are_processed_in_virtual_time_order_with_the_newest_models(tmp_path, bits):
    """With quantized messages the reference also checks the noise keys: a node's k-th model is sent as
    version k + 1, keyed as the real engine keys it (the simulator once used k)."""
    # paces B/V + T_c * s/16 (16 bits: 8/8 + 0.5 = 1.5, 8/16 + 0.5 = 1.0, 8/32 + 0.5 = 0.75, 1.5; exact in binary)
    config = small_config(tmp_path, "algorithm.name=async_dsgd", f"compression.bits={bits}", "run.iterations=5",
                          "emulation.comm_time_s=0.5", "algorithm.overlap=false", "algorithm.schedule=constant",
                          "algorithm.alpha=0.1",
                          "algorithm.eps=1.0", *fixed_speeds([8.0, 16.0, 32.0, 8.0]))
    result = simulate(config, write=False)
    assert result.events == expected_events(config, 20)
    if bits == 16:
        assert result.events == [(0.75, 2), (1.0, 1), (1.5, 0), (1.5, 2), (1.5, 3), (2.0, 1), (2.25, 2), (3.0, 0),
                                 (3.0, 1), (3.0, 2), (3.0, 3), (3.75, 2), (4.0, 1), (4.5, 0), (4.5, 2), (4.5, 3),
                                 (5.0, 1), (5.25, 2), (6.0, 0), (6.0, 1)]
        assert result.summary["iterations_per_node"] == [4, 6, 7, 3]
        assert result.rows[-1]["time_s"] == 6.0
    for got, want in zip(result.models, reference_async_models(config, result.events)):
        assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_algorithms_without_a_consensus_step_ignore_eps_in_the_simulator_as_in_real_runs(tmp_path):
    """algorithm.eps is QuanTimed's consensus step; DSGD has none, so eps 12 with schedule=constant (the
    quickstart's value) must not stop a DSGD simulation (it once did, while real runs ignored it)."""
    config = small_config(tmp_path, "algorithm.name=dsgd", "compression.bits=16", "algorithm.schedule=constant",
                          "run.iterations=3")
    assert config.algorithm.eps == 12.0
    result = simulate(config, write=False)
    assert result.summary["iterations"] == 3 and "eps" not in result.summary
    assert get_spec("dsgd").step_sizes("constant", 0.5, 12.0, 3).eps == 1.0
    assert get_spec("async_dsgd").step_sizes("constant", 0.5, 12.0, 3).eps == 1.0
    with pytest.raises(Exception, match="algorithm.eps"):  # where eps is used, it is still checked
        get_spec("qdsgd").step_sizes("constant", 0.5, 12.0, 3)


def test_async_with_uniform_speeds_keeps_every_nodes_own_pace(tmp_path):
    config = small_config(tmp_path, "algorithm.name=async_dsgd", "compression.bits=4", "run.iterations=6",
                          "emulation.comm_time_s=1.0", "run.seed=2", "algorithm.overlap=false")
    result = simulate(config, write=False)
    times = [t for t, _ in result.events]
    assert times == sorted(times) and len(times) == 24
    speeds = SpeedModel("uniform", 10.0, 90.0, (), seed=2)
    for j in range(4):
        mine = [t for t, node in result.events if node == j]
        ends = [sum(8 / speeds.speed(j, k) + 1.0 * 4 / 16 for k in range(m + 1)) for m in range(len(mine))]
        assert mine == pytest.approx(ends, rel=1e-12)


def test_sim_cli_writes_the_run_directory_of_a_real_run(tmp_path):
    out = tmp_path / "run"
    result = run_qtd(["sim", "configs/quickstart.yaml", "--set", f"run.out_dir={out}", "--set", "run.iterations=20",
                      "--set", "run.eval_every=5", "--set", "emulation.comm_time_s=0.5"], timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "virtual time" in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    for key in ("algorithm", "nodes", "iterations", "time_s", "eval_loss", "eval_accuracy", "consensus_error",
                "bytes_sent", "eval_bytes", "bits", "samples_per_iteration", "bytes_sent_per_node", "deadline_s",
                "deadline_overshoot_p99_s", "micro_batch_p99_s"):
        assert key in summary, key
    assert summary["iterations"] == 20 and summary["nodes"] == 8 and summary["simulated"] is True
    assert summary["time_s"] == pytest.approx(20 * max(0.02, 0.5 * 4 / 16))  # quickstart overlaps
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [5, 10, 15, 20]
    assert all(set(r) >= {"iteration", "time_s", "eval_loss", "eval_accuracy", "consensus_error", "bytes_sent"}
               for r in rows)
    assert load_config(out / "config.yaml").run.out_dir == str(out)
    assert len(read_jsonl(out / "nodes" / "node_007.jsonl")) == 20
    assert (out / "tensorboard" / "global").is_dir() and (out / "tensorboard" / "node_000").is_dir()
    assert torch.load(out / "sim_models.pt", weights_only=True)["params"].shape[0] == 8


def test_sim_cli_errors_are_one_line(tmp_path):
    result = run_qtd(["sim", "configs/quickstart.yaml", "--set", "mode=ps", "--set", f"run.out_dir={tmp_path}"],
                     timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("qtd: error: mode='ps'")
    assert "Traceback" not in result.stderr


def test_divergence_stops_the_run_and_is_reported(tmp_path):
    config = small_config(tmp_path, "algorithm.name=dsgd", "compression.bits=32", "run.iterations=50",
                          "algorithm.schedule=constant", "algorithm.alpha=100000000.0", "algorithm.eps=1.0")
    with pytest.warns(UserWarning, match="diverged"):
        result = simulate(config, write=False)
    assert result.summary["diverged"] is True and result.summary["eval_loss"] is None
    assert result.summary["iterations"] < 50


def test_a_sweep_can_stop_at_a_target_loss(tmp_path):
    config = small_config(tmp_path, "algorithm.name=dsgd", "compression.bits=16", "run.iterations=40",
                          "run.eval_every=3")
    result = simulate(config, write=False, stop_at_loss=100.0)
    assert [row["iteration"] for row in result.rows] == [3] and result.summary["iterations"] == 3


def test_paper_configs_describe_the_papers_mnist_setting(tmp_path, mnist_dir):
    from qtd.engine.problem import build_problem
    from qtd.topology import build_topology
    for name in ("quantimed", "qdsgd", "dsgd", "async_dsgd", "allreduce_sgd"):
        config = load_config(REPO / "configs" / "paper" / f"{name}.yaml")  # what qtd launch checks first
        assert config.data.root == "data/mnist" and config.algorithm.name == name
        assert (config.topology.kind, config.topology.nodes, config.topology.p) == ("erdos_renyi", 50, 0.4)
        assert (config.emulation.speed_low, config.emulation.speed_high, config.emulation.comm_time_s) == (10, 90, 3)
        build_topology(config.topology)
    config = load_config(REPO / "configs" / "paper" / "dsgd.yaml",
                         [f"data.root={mnist_dir}", "run.iterations=2", "run.eval_every=2", f"run.out_dir={tmp_path}"])
    assert len(build_problem(config).eval_indices) == 10_000  # the paper's loss: all 10,000 training images
    result = simulate(config, write=False, progress=False)
    assert len(result.rows) == 1 and result.rows[0]["eval_loss"] < 2.5


# -- the simulator and the real engine agree ---------------------------------------------------------------

def _real_models(tmp_path: Path, overrides: list[str]) -> tuple[Path, list[torch.Tensor]]:
    out = tmp_path / "real"
    args = ["launch", "configs/quickstart.yaml", "--set", f"run.out_dir={out}"]
    result = run_qtd(args + sum((["--set", o] for o in overrides), []), timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    return out, [torch.load(out / "checkpoints" / "iter_00000004" / f"node_{r:03d}.pt", weights_only=True)["params"]
                 for r in range(4)]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm, extra", [
    ("quantimed", []), ("qdsgd", []), ("dsgd", []), ("allreduce_sgd", []),
    ("choco", ["algorithm.overlap=false"]), ("quantimed_choco", ["algorithm.gamma=0.5"]),
    ("dsgd", ["topology.kind=one_peer_exponential"]), ("quantimed", ["topology.kind=random_matching"]),
    ("choco", ["compression.differences=topk", "compression.k_ratio=0.2"]),
    ("quantimed_choco", ["compression.differences=sign"]), ("quantimed", ["compression.block_size=64"])])
def test_simulator_and_real_engine_reach_the_same_models(tmp_path, algorithm, extra):
    overrides = SMALL + [f"algorithm.name={algorithm}", f"compression.bits={BITS[algorithm]}", "run.iterations=4",
                         "run.eval_every=4", *extra]
    deadline_bound = get_spec(algorithm).deadline_bound
    # fixed emulated speeds make the real sample counts known, floor(V * T_d); slow enough that a busy machine
    # keeps the pace (0.27 to 0.8 s of paced time per micro-batch of 4: see tests/test_engine.py)
    if deadline_bound:
        overrides += ["emulation.stragglers=true", *fixed_speeds([5, 7.5, 10, 15]),
                      "algorithm.deadline_s=2.0", "algorithm.micro_batch_size=4"]
    out, real = _real_models(tmp_path, overrides)
    config = load_config(out / "config.yaml", [f"run.out_dir={tmp_path / 'sim'}"])
    result = simulate(config, write=False)
    if deadline_bound:
        logged = [[row["samples"] for row in read_jsonl(out / "nodes" / f"node_{i:03d}.jsonl")] for i in range(4)]
        assert result.samples == logged == [[int(v * 2.0)] * 4 for v in (5, 7.5, 10, 15)]
    for got, want in zip(result.models, real):
        assert_close(got, want, rtol=1e-5, atol=1e-6)
    real_summary = json.loads((out / "summary.json").read_text())
    assert result.summary["bytes_sent"] == real_summary["bytes_sent"]
    assert set(real_summary) <= set(result.summary)
    assert result.summary["eval_loss"] == pytest.approx(real_summary["eval_loss"], rel=1e-4)


def test_a_batchnorm_models_evaluation_uses_the_nodes_mean_statistics_as_model_pt_does(tmp_path):
    from qtd.engine.points import evaluate_sum
    from qtd.engine.problem import build_problem

    config = load_config("configs/quickstart.yaml", SMALL + [
        "algorithm.name=dsgd", "compression.bits=32", "run.iterations=5", "run.eval_every=5",
        "model.name=tests.api_workers:make_batchnorm_model", f"run.out_dir={tmp_path / 'bn'}"])
    result = simulate(config)
    saved = torch.load(tmp_path / "bn" / "model.pt", weights_only=True)
    problem = build_problem(config)
    assert not torch.equal(saved["2.running_mean"], problem.template.state_dict()["2.running_mean"])
    problem.template.load_state_dict(saved)
    loss_sum, _, count = evaluate_sum(problem.template, problem.eval_set, problem.eval_indices, torch.device("cpu"))
    assert result.summary["eval_loss"] == pytest.approx(loss_sum / count, rel=1e-4)
