"""``algorithm.deadline_s: auto``: the estimators and the rule by hand, the simulator's agreement, and a real
4-node run whose nodes agree on one T_d per iteration and find the emulated link's exchange time."""

import json
import math

import numpy as np
import pytest
import torch

from qtd.config import ConfigError, load_config
from qtd.deadline.auto import (MAX_STEP, MEAN_GRAD_SQ, MIN_DEADLINE_S, PROBE, SHRINK, AutoDeadline, best_deadline,
                               noise_terms, seen_exchange_s)
from qtd.sim import Simulation
from qtd.sim.stack import LoopGradients, StackedGradients, split_groups

from .harness import run_qtd

QUICKSTART = "configs/quickstart.yaml"


def test_noise_terms_are_unbiased_for_a_known_gradient_and_covariance():
    gen = torch.Generator().manual_seed(0)
    truth = torch.tensor([0.3, -0.2, 0.5, 0.1], dtype=torch.float64)  # |G|^2 = 0.39
    scale = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64)  # tr(Sigma) = 1 + 4 + 0.25 + 2.25 = 7.5
    traces, grads = [], []
    for _ in range(4000):
        samples = truth + scale * torch.randn(17, 4, generator=gen, dtype=torch.float64)
        a, b = split_groups(17, 5)  # micro-batches of 5: the first in halves, then to the smaller group
        s_a, s_b = samples[a].sum(0), samples[b].sum(0)
        trace, grad_sq = noise_terms(float(s_a @ s_a), len(a), float(s_b @ s_b), len(b),
                                     float((s_a + s_b) @ (s_a + s_b)))
        traces.append(trace)
        grads.append(grad_sq)
    assert np.mean(traces) == pytest.approx(7.5, rel=0.05)
    assert np.mean(grads) == pytest.approx(0.39, abs=0.03)
    assert noise_terms(1.0, 0, 1.0, 3, 1.0) is None  # one group empty: no estimate


def test_split_groups_halve_the_first_micro_batch_then_balance():
    assert split_groups(12, 5) == ([0, 1, 2, 10, 11], [3, 4, 5, 6, 7, 8, 9])
    assert split_groups(3, 5) == ([0, 1], [2])
    assert split_groups(1, 5) == ([0], [])


@pytest.mark.parametrize("a,t_x,b", [(0.2, 0.75, 0.0), (2.0, 0.1, 3.0), (0.01, 5.0, 0.5)])
def test_best_deadline_minimizes_the_time_model(a, t_x, b):
    grid = np.geomspace(1e-4, 1e3, 200001)
    without = (1 + b + a / grid) * (grid + t_x)
    assert best_deadline(t_x, a, b, overlap=False) == pytest.approx(grid[np.argmin(without)], rel=1e-3)
    with_overlap = (1 + b + a / grid) * np.maximum(grid, t_x)
    assert best_deadline(t_x, a, b, overlap=True) == pytest.approx(grid[np.argmin(with_overlap)], rel=1e-3)


def test_seen_exchange_time():
    assert seen_exchange_s(0.2, 0.5, overlap=False) == 0.5
    assert seen_exchange_s(0.2, 0.3, overlap=True) == pytest.approx(0.5)
    assert seen_exchange_s(0.2, 0.0001, overlap=True) is None  # hidden behind the compute phase


def _table(nodes):
    rows = [node.values() for node in nodes]
    return {key: np.array([row[key] for row in rows]) for key in rows[0]}


def test_every_node_agrees_on_the_same_deadline_from_the_same_table():
    nodes = [AutoDeadline(0.5, overlap=False, nodes=3) for _ in range(3)]
    for i, node in enumerate(nodes):  # different measurements on each node
        for k in range(4):
            node.record(0.5, 0.3 + 0.01 * i, 10 + i + k, (30.0 + i, 99.0), rounding=0.1 * i)
    table = _table(nodes)
    table[MEAN_GRAD_SQ] = np.full(3, 2.0)  # |window mean of mean_i g_i|^2, the same on every node (all-reduce)
    chosen = [node.agree(table) for node in nodes]
    assert len(set(chosen)) == 1
    trace = 31.0  # the nodes' mean tr(Sigma); their local |G_i|^2 (99) is not the average's and is not used
    inverse_samples = sum(np.mean([1 / (10 + i + k) for k in range(4)]) for i in range(3))
    grad_sq = 2.0 - trace * inverse_samples / (9 * 4)  # less the sampling noise of 4 iterations' mean
    inverse = np.mean([np.mean([0.5 / (10 + i + k) for k in range(4)]) for i in range(3)]) / 3
    rounding = 0.1 * (0 + 1 + 2) / 9
    expected = best_deadline(0.31, trace * inverse / grad_sq, rounding / grad_sq, overlap=False)
    assert 0.5 / MAX_STEP < expected < 0.5
    assert chosen[0] == pytest.approx(expected)
    assert all(node.window.iterations == 0 for node in nodes)  # a new window


def test_a_gradient_lost_in_its_noise_holds_the_deadline():
    node = AutoDeadline(0.2, overlap=False, nodes=1)
    node.record(0.2, 0.3, 4, (50.0, 0.0))
    table = _table([node])
    table[MEAN_GRAD_SQ] = np.array([1.0])  # below the sampling noise 50/4: no signal measured
    assert node.agree(table) == 0.2


def test_overlap_follows_the_exchange_time_and_probes_below_it_when_hidden():
    node = AutoDeadline(0.1, overlap=True, nodes=1)
    node.record(0.1, None, 5, None)  # hidden, never seen: shrink
    assert node.agree(_table([node])) == pytest.approx(0.1 * SHRINK)
    node.record(0.07, 0.12, 5, None)  # the exchange outlasted the compute phase: T_d = T_x
    assert node.agree(_table([node])) == pytest.approx(0.12)
    node.record(0.12, None, 5, None)  # hidden again: creep below the last exchange time seen
    assert node.agree(_table([node])) == pytest.approx(0.12 * PROBE)
    for _ in range(60):  # the link became much faster and stays hidden: T_d keeps looking lower
        node.record(node.deadline_s, None, 5, None)
        node.agree(_table([node]))
    assert node.deadline_s < 0.01 and node.deadline_s >= MIN_DEADLINE_S


def test_the_controller_state_survives_a_checkpoint():
    node = AutoDeadline(0.3, overlap=False, nodes=2)
    node.record(0.3, 0.2, 7, (2.0, 0.4))
    node.agree(_table([node, AutoDeadline(0.3, overlap=False, nodes=2)]))
    again = AutoDeadline(0.3, overlap=False, nodes=2)
    again.load_state_dict(node.state_dict())
    assert again.deadline_s == node.deadline_s and again.smoothed == node.smoothed


def test_config_accepts_auto_and_refuses_other_words():
    config = load_config(QUICKSTART, ["algorithm.deadline_s=auto", "algorithm.deadline_start_s=0.05"])
    assert config.algorithm.auto_deadline and config.algorithm.first_deadline_s == 0.05
    with pytest.raises(ConfigError, match="or auto"):
        load_config(QUICKSTART, ["algorithm.deadline_s=fastest"])


def _simulated(tmp_path, overrides):
    config = load_config(QUICKSTART, [f"run.out_dir={tmp_path}", "run.progress=false", "run.iterations=120",
                                      "run.eval_every=10", "algorithm.deadline_s=auto", "emulation.comm_time_s=0.2",
                                      *overrides])
    return Simulation(config, write=True, progress=False).run()


def test_the_simulator_finds_the_exchange_time_with_overlap(tmp_path):
    result = _simulated(tmp_path, ["algorithm.overlap=true"])
    t_x = 0.2 * 4 / 16  # one 4-bit model copy
    chosen = [row["deadline_s"] for row in result.rows]
    assert chosen[0] < 0.1  # the start (0.1 s) hides the exchange: T_d shrinks
    assert all(PROBE * PROBE * t_x * 0.99 <= d <= t_x * 1.0001 for d in chosen[-4:])
    logged = [json.loads(line)["deadline_s"] for line in (tmp_path / "nodes" / "node_003.jsonl").open()]
    assert len(logged) == 120 and logged[0] == 0.1 and logged[-1] == pytest.approx(chosen[-2])
    assert result.summary["deadline_s"] == "auto" and result.summary["deadline_s_final"] == chosen[-1]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(tmp_path / "tensorboard" / "global")).Reload()
    assert [round(e.value, 6) for e in board.Scalars("train/deadline_s")] == [round(d, 6) for d in chosen]


def test_the_simulator_without_overlap_uses_the_noise_rule(tmp_path):
    result = _simulated(tmp_path, ["algorithm.overlap=false"])
    chosen = [row["deadline_s"] for row in result.rows]
    assert len(set(chosen)) > 3 and all(MIN_DEADLINE_S <= d <= 0.1 * MAX_STEP ** len(chosen) for d in chosen)
    assert math.isfinite(result.rows[-1]["eval_loss"]) and result.rows[-1]["eval_loss"] < result.rows[0]["eval_loss"]


@pytest.mark.parametrize("gradients", ["stacked", "loop"])
def test_split_gradients_are_the_plain_gradients_with_a_noise_estimate(gradients):
    config = load_config(QUICKSTART, ["topology.nodes=3"])
    from qtd.engine.problem import build_problem

    def build():
        problem = build_problem(config)
        samplers = [problem.node_sampler(i, 0) for i in range(3)]
        if gradients == "stacked":
            return StackedGradients(problem.template, problem.splits.train, samplers, torch.device("cpu")), problem
        return LoopGradients(problem.template, samplers, torch.device("cpu")), problem

    plain, problem = build()
    split, _ = build()
    models = problem.new_flat_model(torch.device("cpu")).params.detach().repeat(3, 1)
    counts = [12, 3, 0]
    grads, losses = plain(models, counts, 5)
    grads2, losses2, noise = split.halves(models, counts, 5)
    torch.testing.assert_close(grads2, grads, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(losses2, losses)
    assert noise[0] is not None and noise[1] is not None and noise[2] is None  # 3 samples: halves of 2 and 1


def test_a_real_run_agrees_on_one_deadline_per_iteration_and_finds_the_link_time(tmp_path):
    out = tmp_path / "run"
    proc = run_qtd(["launch", QUICKSTART, "--set", "topology.nodes=4", "--set", "run.iterations=80",
                    "--set", "run.eval_every=8", "--set", "algorithm.deadline_s=auto", "--set", f"run.out_dir={out}",
                    "--set", "run.progress=false", "--set", "emulation.links=true",
                    "--set", "emulation.comm_time_s=0.4"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = [[json.loads(line) for line in (out / "nodes" / f"node_{i:03d}.jsonl").open()] for i in range(4)]
    per_iteration = [{log[k]["deadline_s"] for log in logs} for k in range(80)]
    assert all(len(chosen) == 1 for chosen in per_iteration)  # every node used the same T_d
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    t_x = 0.4 * 4 / 16  # the emulated link's time for one 4-bit copy of the model (0.1 s) plus real gloo time
    assert rows[0]["deadline_s"] != 0.1
    assert 0.5 * t_x <= rows[-1]["deadline_s"] <= 3 * t_x
    summary = json.loads((out / "summary.json").read_text())
    assert summary["deadline_s"] == "auto" and summary["deadline_s_final"] == rows[-1]["deadline_s"]


def test_the_engine_forms_the_simulators_groups(tmp_path):
    """A real node's GradientSource (an emulated speed caps it at floor(V T_d) = 12 samples) gives the noise
    estimate and gradient of the simulator's StackedGradients.halves on the same samples."""
    from qtd.deadline.auto import AutoDeadline
    from qtd.engine.problem import build_problem, make_gradient_step
    from qtd.engine.steps.base import GradientSource

    config = load_config(QUICKSTART, ["topology.nodes=2"])
    problem = build_problem(config)
    flat = problem.new_flat_model(torch.device("cpu"))
    step = make_gradient_step(flat, problem.node_sampler(1, 0), torch.device("cpu"))
    source = GradientSource(flat, step, torch.device("cpu"), lambda t: 24.0, 20, 0.5, 5,
                            AutoDeadline(0.5, overlap=True, nodes=2))
    result, _ = source.compute(0)
    assert result.samples == 12
    stacked = StackedGradients(problem.template, problem.splits.train,
                               [problem.node_sampler(0, 0), problem.node_sampler(1, 0)], torch.device("cpu"))
    models = flat.params.detach().clone().repeat(2, 1)
    with torch.no_grad():
        models.copy_(problem.new_flat_model(torch.device("cpu")).params.detach().repeat(2, 1))
    grads, _, noise = stacked.halves(models, [0, 12], 5)
    torch.testing.assert_close(grads[1], flat.grads, rtol=1e-4, atol=1e-6)
    assert source.noise == pytest.approx(noise[1], rel=1e-3)
