"""The library API with real gloo processes: qtd.Decentralized in a user's own loop against the config engine,
the deadline iterator over a DataLoader, BatchNorm buffers, model.pt and qtd export, qtd.TopKAMSGrad against
the parameter-server engine, and the two examples run with torchrun."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.testing import assert_close

from qtd.compress import message_nbytes
from qtd.config import load_config
from qtd.deadline import deadline_samples
from qtd.engine.problem import build_problem
from qtd.metrics import read_jsonl
from tests.harness import REPO, child_env, run_qtd, run_ranks

pytestmark = pytest.mark.slow

COMMON = ["topology.kind=ring", "topology.nodes=4", "data.name=synthetic", "model.hidden=[16]", "run.iterations=5",
          "run.eval_every=5", "run.progress=false", "algorithm.batch_size=8", "algorithm.schedule=constant",
          "algorithm.alpha=0.2", "algorithm.eps=0.5"]
SPEEDS = [15.0, 25.0, 35.0, 45.0]  # with T_d = 0.5 s: floor(V T_d) = 7, 12, 17, 22, each 0.5 sample from the edge
CASES = {
    "dsgd": ["algorithm.name=dsgd", "compression.bits=32"],
    "qdsgd": ["algorithm.name=qdsgd", "compression.bits=4"],
    "one_peer": ["algorithm.name=qdsgd", "compression.bits=4", "topology.kind=one_peer_exponential"],
    "allreduce_sgd": ["algorithm.name=allreduce_sgd", "compression.bits=32"],
    "quantimed": ["algorithm.name=quantimed", "compression.bits=5", "emulation.stragglers=true",
                  "emulation.speed_distribution=fixed", f"emulation.speeds={SPEEDS}", "algorithm.deadline_s=0.5",
                  "algorithm.micro_batch_size=4"],
    "momentum": ["algorithm.name=qdsgd", "compression.bits=32", "algorithm.momentum=0.9", "algorithm.nesterov=true",
                 "algorithm.weight_decay=0.001", "algorithm.warmup_steps=2", "algorithm.lr_decay=cosine"],
    "momentum_allreduce": ["algorithm.name=allreduce_sgd", "compression.bits=32", "algorithm.momentum=0.8",
                           "algorithm.weight_decay=0.01", "algorithm.lr_decay=step", "algorithm.decay_every=2",
                           "algorithm.decay_gamma=0.5"],
}

ENGINE_ONLY = {"batchnorm": ["algorithm.name=dsgd", "compression.bits=32",
                             "model.name=tests.api_workers:make_batchnorm_model"]}


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """Every case run by the engine (run_node) and by a user's loop with qtd.Decentralized + torch.optim.SGD,
    in one group of 4 gloo processes; returns (run root, per-rank results)."""
    tmp = tmp_path_factory.mktemp("api")
    args = {"config": str(REPO / "configs" / "quickstart.yaml"), "out": str(tmp / "runs"),
            "cases": {name: COMMON + overrides for name, overrides in {**CASES, **ENGINE_ONLY}.items()},
            "engine_only": list(ENGINE_ONLY)}
    run_ranks("tests.api_workers:library_vs_engine_worker", 4, tmp, args, timeout=900)
    return tmp / "runs", [torch.load(tmp / f"rank{r}.out", weights_only=True) for r in range(4)]


def _engine(runs: Path, case: str):
    out = runs / case / "engine"
    params = [torch.load(out / "checkpoints" / "iter_00000005" / f"node_{r:03d}.pt", weights_only=True)["params"]
              for r in range(4)]
    return out, params, json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("case", list(CASES))
def test_a_users_loop_with_the_wrapper_ends_with_the_engines_models(both, case):
    """Plain SGD at lr = alpha eps, then the consensus step, is the paper's update; momentum, Nesterov, weight
    decay and the schedules are torch.optim.SGD's and a LambdaLR on the engine's schedule. Same samples (the
    engine's sampler as the user's iterable), same initial model, same wire messages."""
    runs, results = both
    out, engine, summary = _engine(runs, case)
    for rank in range(4):
        assert_close(results[rank][case]["params"], engine[rank], rtol=1e-5, atol=1e-5)
        assert results[rank][case]["bytes_sent"] == summary["bytes_sent_per_node"][rank]
        assert results[rank][case]["state"]["iteration"] == 5
    if case == "quantimed":  # the deadline iterator computed floor(V T_d) samples, as the engine's nodes did
        for rank, speed in enumerate(SPEEDS):
            logged = [row["samples"] for row in read_jsonl(out / "nodes" / f"node_{rank:03d}.jsonl")]
            assert results[rank][case]["samples"] == logged == [deadline_samples(speed, 0.5)] * 5


def test_the_wrapper_sends_the_engines_wire_messages_and_counts_their_bytes(both):
    runs, results = both
    config = load_config(runs / "qdsgd" / "engine" / "config.yaml")
    numel = build_problem(config).new_flat_model(torch.device("cpu")).numel
    for rank in range(4):  # a ring: two neighbours, one 4-bit message of p values to each, per round
        assert results[rank]["qdsgd"]["bytes_sent"] == 5 * 2 * message_nbytes(numel, 4)


def test_engine_and_wrapper_write_the_network_average_model_and_qtd_export_rebuilds_it(both, tmp_path):
    runs, results = both
    for case in ("qdsgd", "quantimed", "momentum"):
        out, engine, _ = _engine(runs, case)
        model = build_problem(load_config(out / "config.yaml")).template
        saved = torch.load(out / "model.pt", weights_only=True)
        model.load_state_dict(saved)  # loads into the user's own module
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        assert_close(flat, torch.stack(engine).double().mean(dim=0).float(), rtol=0, atol=1e-7)
        library = torch.load(runs / case / "library" / "model.pt", weights_only=True)
        for key in saved:
            assert_close(library[key], saved[key], rtol=1e-5, atol=1e-5)
            assert_close(results[1][case]["average"][key], library[key], rtol=0, atol=0)  # every rank got it
        exported = tmp_path / f"{case}.pt"
        result = run_qtd(["export", str(out), "-o", str(exported)], timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        again = torch.load(exported, weights_only=True)
        assert all(torch.equal(again[key], saved[key]) for key in saved), case
    out, engine, _ = _engine(runs, "dsgd")
    result = run_qtd(["export", str(out), "--node", "2"], timeout=120)
    assert result.returncode == 0 and "node 2's model at iteration 5" in result.stdout
    node2 = torch.load(out / "model_node_002.pt", weights_only=True)
    assert torch.equal(torch.cat([v.reshape(-1) for v in node2.values()]), engine[2])


def test_an_engine_run_checkpoints_batchnorm_statistics_and_averages_them_into_model_pt(both, tmp_path):
    runs, _ = both
    out = runs / "batchnorm" / "engine"
    states = [torch.load(out / "checkpoints" / "iter_00000005" / f"node_{r:03d}.pt", weights_only=True)
              for r in range(4)]
    means = torch.stack([state["buffers"]["2.running_mean"] for state in states])
    assert not torch.equal(means[0], means[1])  # every node's statistics of its own data
    saved = torch.load(out / "model.pt", weights_only=True)
    assert_close(saved["2.running_mean"], means.double().mean(dim=0).float(), rtol=0, atol=1e-7)
    assert int(saved["2.num_batches_tracked"]) == 5
    # the run's own evaluation used those averaged statistics too: it is model.pt's loss on the eval set
    from qtd.engine.points import evaluate_sum
    problem = build_problem(load_config(out / "config.yaml"))
    problem.template.load_state_dict(saved)
    loss_sum, _, count = evaluate_sum(problem.template, problem.eval_set, problem.eval_indices, torch.device("cpu"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_loss"] == pytest.approx(loss_sum / count, rel=1e-4)
    result = run_qtd(["export", str(out), "-o", str(tmp_path / "bn.pt")], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    exported = torch.load(tmp_path / "bn.pt", weights_only=True)
    assert all(torch.equal(exported[key], saved[key]) for key in saved)


def test_qtd_export_bad_input_is_one_line(both, tmp_path):
    runs, _ = both
    out = runs / "dsgd" / "engine"
    for args, expected in ((["export", str(tmp_path / "nowhere")], "is not a qtd run directory"),
                           (["export", str(out), "--node", "4"], "--node 4 is not a node of this 4-node run"),
                           (["export", str(out), "--iteration", "3"], "--iteration 3: no complete checkpoint")):
        result = run_qtd(args, timeout=120)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("qtd: error: ") and expected in lines[0], result.stderr


def test_the_wrapper_writes_the_engines_tensorboard_tags_and_evaluation_values(both):
    runs, results = both
    for run_name, wanted in (("node_001", {"node/train_loss", "node/samples", "node/compute_s", "node/wait_s",
                                           "node/bytes_sent", "node/speed"}),
                             ("global", {"eval/loss", "eval/accuracy", "eval/consensus_error",
                                         "comm/bytes_sent_total", "time/train_s"})):
        tags = {}
        for side in ("engine", "library"):
            run = EventAccumulator(str(runs / "quantimed" / side / "tensorboard" / run_name)).Reload()
            tags[side] = set(run.Tags()["scalars"])
        assert wanted <= tags["library"] <= tags["engine"], run_name
    run = EventAccumulator(str(runs / "quantimed" / "library" / "tensorboard" / "global")).Reload()
    assert [(e.step, e.value) for e in run.Scalars("eval/loss")] == [(5, 1.25)]
    for case in ("qdsgd", "quantimed", "allreduce_sgd"):  # log_evaluation's consensus error and traffic
        _, _, summary = _engine(runs, case)
        assert results[2][case]["consensus_error"] == pytest.approx(summary["consensus_error"], rel=1e-3, abs=1e-9)
        assert results[2][case]["bytes_total"] == summary["bytes_sent"]


def test_the_deadline_iterator_draws_floor_of_speed_times_deadline_from_a_shuffling_dataloader(tmp_path):
    args = {"speeds": SPEEDS, "deadline_s": 0.5, "samples": 30, "batch_size": 4, "rounds": 3, "epochs": 2}
    run_ranks("tests.api_workers:deadline_loader_worker", 4, tmp_path, args, timeout=300)
    for rank, speed in enumerate(SPEEDS):
        got = json.loads((tmp_path / f"rank{rank}.out").read_text())
        cap = deadline_samples(speed, 0.5)
        assert [r["samples"] for r in got["rounds"]] == [cap] * 6
        assert all(sum(r["sizes"]) == cap and max(r["sizes"]) <= 4 for r in got["rounds"])
        assert all(r["compute_s"] >= cap / speed - 0.01 for r in got["rounds"])  # paced: no faster than V
        seen = [i for batch in got["batches"] for i in batch]
        for start in range(0, len(seen) - 29, 30):  # batches cut at the cap continue next round: no sample lost
            assert sorted(seen[start:start + 30]) == list(range(30))
        assert got["bytes_sent"] == 6 * 3 * message_nbytes(6 * 8 + 8 + 8 * 3 + 3, 6)  # complete graph of 4


def test_a_self_tuning_deadline_is_one_t_d_on_every_node_per_window_and_survives_the_state_dict(tmp_path):
    args = {"start_s": 0.2, "window": 3, "rounds": 10, "speed": 40.0}
    run_ranks("tests.api_workers:auto_deadline_worker", 4, tmp_path, args, timeout=300)
    got = [json.loads((tmp_path / f"rank{rank}.out").read_text()) for rank in range(4)]
    chosen = [r["deadline_s"] for r in got[0]["rounds"]]
    assert all([r["deadline_s"] for r in g["rounds"]] == chosen and g["next"] == got[0]["next"] for g in got)
    assert chosen[:3] == [0.2] * 3  # the first window runs at deadline_start_s
    for start in range(0, 10, 3):  # one T_d per window of 3 rounds, changed (by at most 2x) at each agreement
        assert len(set(chosen[start:start + 3])) == 1
        if start:
            assert chosen[start] != chosen[start - 1] and 0.5 <= chosen[start] / chosen[start - 1] <= 2
    for g in got:  # each round computed the floor(V T_d) samples of its own T_d
        assert [r["samples"] for r in g["rounds"]] == [deadline_samples(40.0, d) for d in chosen]
        assert g["restored"] == g["next"]
        assert 'saved without deadline_s="auto"' in g["refused"]


def test_batchnorm_statistics_are_mixed_like_the_model_or_kept_local(tmp_path):
    run_ranks("tests.api_workers:buffers_worker", 4, tmp_path, {}, timeout=300)
    runs = [torch.load(tmp_path / f"rank{r}.out", weights_only=True) for r in range(4)]
    for buffers in ("average", "local"):
        got = [run[buffers] for run in runs]
        w = got[0]["w"]
        for t in range(3):
            for i in range(4):
                record = got[i]["records"][t]
                assert record["count"] == t + 1  # integer buffers stay local
                if buffers == "local":
                    assert torch.equal(record["mixed"], record["after"])
                    continue
                mixed = record["after"] + sum(w[i, j] * (got[j]["records"][t]["sent"] - record["sent"])
                                              for j in range(4) if j != i)
                assert_close(record["mixed"], mixed, rtol=1e-6, atol=1e-6)
        assert not torch.equal(got[0]["records"][1]["sent"], got[1]["records"][1]["sent"])  # nodes' data differ
        mean = torch.stack([g["state"]["1.running_mean"] for g in got]).mean(dim=0)
        assert_close(got[0]["average"]["1.running_mean"], mean, rtol=1e-6, atol=1e-6)  # model.pt's average
        assert torch.equal(got[0]["average"]["1.running_mean"], got[3]["average"]["1.running_mean"])


def test_topk_amsgrad_takes_the_ps_engines_step_bit_for_bit_and_its_state_dict_round_trips(tmp_path):
    cases = {"topk_ef": ["ps.compressor=topk", "ps.k_ratio=0.05"],
             "topk_fp16_no_ef": ["ps.compressor=topk", "ps.k_ratio=0.05", "ps.value_bits=16",
                                 "ps.error_feedback=false"],
             "blocksign_ef": ["ps.compressor=blocksign"],
             "dense": ["ps.compressor=none"]}
    common = ["ps.batch_size=8", "ps.check_every=0", "topology.nodes=4", "ps.lr=0.01"]
    args = {"config": str(REPO / "configs" / "ps_digits.yaml"), "iterations": 3,
            "cases": {name: common + extra for name, extra in cases.items()}}
    run_ranks("tests.api_workers:amsgrad_worker", 4, tmp_path, args, timeout=300)
    for rank in range(4):
        got = json.loads((tmp_path / f"rank{rank}.out").read_text())
        for name, result in got.items():
            assert result["steps"] == [True] * 3 and result["after"] == [True] * 2, (rank, name)
            assert result["bytes"][0] == result["bytes"][1] and result["upload"][0] == result["upload"][1]


def _torchrun(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4",
               f"examples/{script}", *args]
    try:
        result = subprocess.run(command, env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{script} did not finish within {timeout} s:\n{exc.stderr}") from None
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_the_own_training_loop_example_trains_writes_a_loadable_model_and_resumes(tmp_path):
    from examples import own_training_loop as example

    out = tmp_path / "own_loop"
    first = _torchrun("own_training_loop.py", "--out", str(out))
    printed = float(re.search(r"test accuracy ([0-9.]+) after 30 epochs", first.stdout).group(1))
    assert printed >= 0.95, first.stdout  # the README states 97.5%: SGD with momentum and weight decay
    model = example.Net()
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))  # the script's own class
    assert example.accuracy(model, example.digits(train=False)) == pytest.approx(printed, abs=5e-5)
    assert all((out / f"checkpoint_rank{r}.pt").is_file() for r in range(4))
    again = _torchrun("own_training_loop.py", "--out", str(out))  # every node resumes after its last epoch
    assert again.stdout == first.stdout


def test_the_ps_optimizer_example_trains_with_identical_replicas(tmp_path):
    result = _torchrun("ps_optimizer.py", "--steps", "200", "--out", str(tmp_path))
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", result.stdout).group(1))
    assert accuracy >= 0.95, result.stdout
    states = [torch.load(tmp_path / f"optimizer_rank{r}.pt", weights_only=True)["server"] for r in range(4)]
    assert all(torch.equal(s["v_hat"], states[0]["v_hat"]) and int(s["step"]) == 200 for s in states)
