"""Elastic gossip (comm.on_peer_loss: continue): the survivors of a killed or stopped node agree on who is
left, recompute their weights and finish the run, through real `qtd launch` runs of 5 processes; plus the
survivors' graph and weights, and the settings that cannot continue, each refused with one message."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from qtd.config import ConfigError, TopologyConfig, load_config
from qtd.engine.membership import MembershipLog
from qtd.errors import TopologyError
from qtd.topology import check_mixing_matrix, survivors
from tests.harness import REPO, child_env
from tests.test_fault_tolerance import _node_processes, _stop_launch

ELASTIC = ("topology.nodes=5", "topology.kind=ring", "run.iterations=90", "run.eval_every=15", "run.progress=false",
           "comm.timeout_s=5", "comm.on_peer_loss=continue")


# -- the survivors' graph -------------------------------------------------------------------------------------

@pytest.mark.parametrize("weights", ["metropolis", "laplacian"])
def test_the_survivors_of_a_ring_mix_over_the_path_that_is_left_with_checked_weights(weights):
    left = survivors(TopologyConfig(kind="ring", nodes=6, weights=weights), (0, 1, 2, 4, 5))
    assert left.members == (0, 1, 2, 4, 5) and left.edges == 4  # the ring 0..5 less node 3: the path 4-5-0-1-2
    check_mixing_matrix(left.mixing)
    assert 0 < left.spectral_gap < 1
    assert left.view(4).neighbours == (5,) and left.view(0).neighbours == (1, 5)
    view = left.view(2)
    assert view.neighbours == (1,) and view.self_weight + sum(view.neighbour_weights) == pytest.approx(1.0)
    if weights == "metropolis":  # 1 / (1 + max degree of the two ends)
        assert view.neighbour_weights == (pytest.approx(1 / 3),)
    else:  # kappa refreshed: max degree 2 of the path, + 2
        assert view.neighbour_weights == (pytest.approx(1 / 4),)


def test_survivors_that_fall_apart_are_named_component_by_component():
    with pytest.raises(TopologyError, match=r"falls apart into 2 components \(0 1 5; 3\)"):
        survivors(TopologyConfig(kind="ring", nodes=6), (0, 1, 3, 5))


def test_the_membership_log_keeps_the_lost_nodes_traffic_and_reports_each_change_once():
    log = MembershipLog([0, 1, 2], 0.5)
    log.seen({"bytes_sent": np.array([10.0, 20.0, 30.0]), "eval_bytes": np.array([1.0, 2.0, 3.0])}, (0, 1, 2))
    log.change({"members": [0, 2], "lost": [1], "iteration": 7, "cause": "died", "spectral_gap": 1.0})
    first, second = log.columns(), log.columns()
    assert first["nodes"] == 2 and first["membership_change"][0]["lost"] == [1]
    assert "membership_change" not in second and second["spectral_gap"] == 1.0
    assert (log.lost_bytes, log.lost_eval_bytes) == (20, 2)
    assert log.summary(0)["membership"]["final"] == [0, 2]


# -- what cannot continue ------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, says", [
    (["mode=ps"], "mode=ps does not go on with fewer workers"),
    (["algorithm.name=async_dsgd"], "runs asynchronously"),
    (["topology.kind=one_peer_exponential"], "changes the peers every iteration"),
    (["comm.backend=nccl"], "use comm.backend=gloo"),
])
def test_runs_that_cannot_continue_without_a_node_are_refused_with_what_to_change(overrides, says):
    with pytest.raises(ConfigError, match=says):
        load_config(REPO / "configs" / "quickstart.yaml", ["comm.on_peer_loss=continue", *overrides])
    with pytest.raises(ConfigError, match="comm.on_peer_loss"):
        load_config(REPO / "configs" / "quickstart.yaml", ["comm.on_peer_loss=maybe"])


def test_an_elastic_node_started_without_qtd_launch_is_refused(tmp_path):
    env = {k: v for k, v in child_env().items() if k != "TORCHELASTIC_USE_AGENT_STORE"}
    node = subprocess.run([sys.executable, "-m", "qtd.train", "--config", "configs/quickstart.yaml", "--set",
                           f"run.out_dir={tmp_path}", "--set", "comm.on_peer_loss=continue"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert node.returncode == 2 and "needs `qtd launch CONFIG`" in node.stderr and "Traceback" not in node.stderr


# -- real runs -------------------------------------------------------------------------------------------------

def _launch_and_hit(out, victim: int, how: signal.Signals, at: int, extra=(), launch=()) -> subprocess.CompletedProcess:
    """`qtd launch` of 5 nodes; ``how`` sent to node ``victim`` once its log reaches iteration ``at``."""
    args = [sys.executable, "-m", "qtd.cli.main", "launch", "configs/quickstart.yaml", *launch]
    for override in (*ELASTIC, f"run.out_dir={out}", *extra):
        args += ["--set", override]
    launcher = subprocess.Popen(args, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    try:
        log = out / "nodes" / f"node_{victim:03d}.jsonl"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and (not log.exists() or len(log.read_text().splitlines()) < at):
            time.sleep(0.05)
        nodes = _node_processes(launcher.pid)
        assert sorted(nodes) == list(range(5)), nodes
        os.kill(nodes[victim], how)
        stdout, stderr = launcher.communicate(timeout=240)
    finally:
        _stop_launch(launcher)
    return subprocess.CompletedProcess(args, launcher.returncode, stdout, stderr)


def _check_survivors_finished(out, victim: int, cause: str, result) -> dict:
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    membership = summary["membership"]
    assert membership["initial"] == [0, 1, 2, 3, 4] and membership["final"] == [r for r in range(5) if r != victim]
    change, = membership["changes"]
    assert change["lost"] == [victim] and change["cause"] == cause and change["members"] == membership["final"]
    assert 0 < change["spectral_gap"] < 1 and change["seconds_lost"] > 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["iteration"] == 90 and rows[-1]["nodes"] == 4 and rows[0]["nodes"] == 5
    changed = [row for row in rows if "membership_change" in row]
    assert len(changed) == 1 and changed[0]["membership_change"][0]["lost"] == [victim]
    assert [row["bytes_sent"] for row in rows] == sorted(row["bytes_sent"] for row in rows)  # the lost node's stay
    for node in membership["final"]:  # every survivor ran to the end, without a restart
        log = [json.loads(line) for line in (out / "nodes" / f"node_{node:03d}.jsonl").read_text().splitlines()]
        assert log[-1]["iteration"] == 90
        assert [row["iteration"] for row in log] == sorted({row["iteration"] for row in log})
    assert summary["eval_accuracy"] > 0.85
    return change



@pytest.mark.slow
def test_a_killed_node_is_dropped_and_the_four_survivors_finish_the_run(tmp_path):
    out = tmp_path / "run"
    result = _launch_and_hit(out, 2, signal.SIGKILL, 30)
    change = _check_survivors_finished(out, 2, "died", result)
    assert change["seconds_lost"] < 5  # a death is seen at once, not after comm.timeout_s
    assert "node 2 was killed by SIGKILL; the others go on without it" in result.stderr
    assert "4 nodes go on from iteration" in result.stderr


@pytest.mark.slow
def test_a_stopped_node_0_is_dropped_after_the_timeout_and_node_1_takes_over_the_run_files(tmp_path):
    out = tmp_path / "run"
    result = _launch_and_hit(out, 0, signal.SIGSTOP, 30)
    _check_survivors_finished(out, 0, "stalled", result)
    assert "node 0 was left out of the run and did not exit; stopping it" in result.stderr


@pytest.mark.slow
def test_choco_survivors_swap_their_public_copies_and_finish(tmp_path):
    out = tmp_path / "run"
    result = _launch_and_hit(out, 3, signal.SIGKILL, 30, ("algorithm.name=choco", "algorithm.gamma=0.5",
                                                          "compression.bits=2", "algorithm.batch_size=16"))
    _check_survivors_finished(out, 3, "died", result)


@pytest.mark.slow
def test_a_killed_node_restarted_by_max_restarts_rejoins_and_ends_as_close_to_the_average_as_the_others(tmp_path):
    out = tmp_path / "run"
    iterations = 500
    result = _launch_and_hit(out, 2, signal.SIGKILL, 30, ("run.iterations=500", "run.eval_every=20",
                                                          "algorithm.deadline_s=0.05"), ("--max-restarts", "1"))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "starting it again to rejoin them" in result.stderr
    membership = json.loads((out / "summary.json").read_text())["membership"]
    assert membership["final"] == [0, 1, 2, 3, 4] and membership["join_bytes"] > 0
    lost, joined = membership["changes"]
    assert lost["lost"] == [2] and lost["cause"] == "died"
    assert joined["joined"] == [2] and joined["cause"] == "joined" and joined["members"] == [0, 1, 2, 3, 4]
    assert lost["iteration"] < joined["iteration"] < iterations
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["iteration"] == iterations and rows[-1]["nodes"] == 5
    # every node's final model, the rejoined one's too: its distance to the average is one of the others'
    final = out / "checkpoints" / f"iter_{iterations:08d}"
    models = {k: torch.load(final / f"node_{k:03d}.pt", weights_only=False)["params"] for k in range(5)}
    average = sum(models.values()) / 5
    spread = {k: float((x - average).square().sum()) for k, x in models.items()}
    others = [spread[k] for k in (0, 1, 3, 4)]
    assert spread[2] <= 1.5 * max(others), spread
    log = [json.loads(line) for line in (out / "nodes" / "node_002.jsonl").read_text().splitlines()]
    assert log[-1]["iteration"] == iterations and any(row["iteration"] > joined["iteration"] for row in log)


@pytest.mark.slow
def test_two_machines_each_supervise_their_nodes_and_the_survivors_finish_when_one_node_dies(tmp_path):
    """Two `qtd launch --nnodes 2 --node-rank R` on one box stand for two machines: machine 0 hosts the store,
    machine 1's node 3 is killed, and nodes 0, 1, 2 finish on both machines."""
    from tests.harness import free_port

    out = tmp_path / "run"
    sets = []
    for override in (*ELASTIC, "topology.nodes=4", f"run.out_dir={out}"):
        sets += ["--set", override]
    endpoint = f"127.0.0.1:{free_port()}"
    machines = [subprocess.Popen([sys.executable, "-m", "qtd.cli.main", "launch", "configs/quickstart.yaml",
                                  "--nnodes", "2", "--node-rank", str(r), "--rdzv-endpoint", endpoint, *sets],
                                 cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for r in (0, 1)]
    try:
        log = out / "nodes" / "node_003.jsonl"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 30):
            time.sleep(0.05)
        nodes = _node_processes(machines[1].pid)
        assert sorted(nodes) == [2, 3], nodes
        os.kill(nodes[3], signal.SIGKILL)
        results = [machine.communicate(timeout=240) for machine in machines]
    finally:
        for machine in machines:
            _stop_launch(machine)
    assert [machine.returncode for machine in machines] == [0, 0], results[1][1][-3000:]
    assert "starting nodes 2-3 of 4" in results[1][1] and "node 3 was killed by SIGKILL" in results[1][1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["membership"]["final"] == [0, 1, 2] and summary["membership"]["changes"][0]["lost"] == [3]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["iteration"] == 90 and rows[-1]["nodes"] == 3


@pytest.mark.parametrize("args, says", [
    (["--nnodes", "2"], "needs both --nnodes N"),
    (["--nnodes", "2", "--rdzv-endpoint", "nohost"], "is not HOST:PORT"),
    (["--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "127.0.0.1:29500"], "is not a machine of"),
    (["--nnodes", "3", "--rdzv-endpoint", "127.0.0.1:29500"], "does not split evenly"),
])
def test_bad_machine_settings_of_an_elastic_launch_are_one_line(tmp_path, args, says):
    result = subprocess.run([sys.executable, "-m", "qtd.cli.main", "launch", "configs/quickstart.yaml", *args,
                             "--set", "comm.on_peer_loss=continue", "--set", f"run.out_dir={tmp_path}",
                             "--set", "topology.nodes=4"], cwd=REPO, env=child_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and says in result.stderr and "Traceback" not in result.stderr, result.stderr

