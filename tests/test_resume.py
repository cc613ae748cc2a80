"""Resume that cannot lose or mislabel: real 4-process runs into directories that already hold a run."""

import json

import pytest
import torch

from qtd.metrics import complete_iterations, read_jsonl
from tests.harness import run_qtd

NODES = 4
BASE = ["run.progress=false", f"topology.nodes={NODES}", "algorithm.name=dsgd", "compression.bits=16",
        "algorithm.schedule=constant", "algorithm.alpha=0.3", "run.eval_every=10"]


def _launch(out, *overrides, expect=0, timeout=240):
    args = ["launch", "configs/quickstart.yaml", "--set", f"run.out_dir={out}"]
    for override in BASE + list(overrides):
        args += ["--set", override]
    result = run_qtd(args, timeout=timeout)
    assert result.returncode == expect, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


def _snapshot(out):
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_resume_never_starts_over_without_losing_the_new_run(tmp_path):
    out = tmp_path / "run"
    _launch(out, "run.iterations=80", "run.checkpoint_every=20")
    assert complete_iterations(out, NODES) == [60, 80]
    _launch(out, "run.iterations=50", "run.checkpoint_every=20", "run.resume=never")
    assert complete_iterations(out, NODES) == [40, 50]  # the new run's, not the old 60 and 80
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [10, 20, 30, 40, 50]
    for node in range(NODES):
        logged = [r["iteration"] for r in read_jsonl(out / "nodes" / f"node_{node:03d}.jsonl")]
        assert logged == list(range(1, 51))
    assert json.loads((out / "summary.json").read_text())["iterations"] == 50


@pytest.mark.slow
def test_a_changed_config_is_refused_and_a_complete_run_is_left_alone(tmp_path):
    out = tmp_path / "run"
    _launch(out, "run.iterations=20", "algorithm.name=qdsgd", "compression.bits=4", "algorithm.eps=0.5")
    before = _snapshot(out)
    changed = _launch(out, "run.iterations=20", "algorithm.name=qdsgd", "compression.bits=2", "algorithm.eps=0.5",
                      expect=2)
    errors = [line for line in changed.stderr.splitlines() if line.startswith("qtd: ")]
    assert len(errors) == 1 and "compression.bits=4 there, 2 here" in errors[0] and "run.resume=never" in errors[0]
    other = _launch(out, "run.iterations=20", expect=2)  # a qdsgd checkpoint resumed as dsgd
    assert "algorithm.name='qdsgd' there, 'dsgd' here" in other.stderr
    same = _launch(out, "run.iterations=20", "algorithm.name=qdsgd", "compression.bits=4", "algorithm.eps=0.5")
    assert "already holds this run, complete" in same.stderr
    assert _snapshot(out) == before  # nothing rewritten, nothing relabelled


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_falls_back_to_the_older_intact_one(tmp_path):
    out = tmp_path / "run"
    _launch(out, "run.iterations=40", "run.checkpoint_every=10")
    assert complete_iterations(out, NODES) == [30, 40]
    final = out / "checkpoints" / "iter_00000040" / "node_002.pt"
    state = torch.load(final, weights_only=True)
    raw = bytearray(final.read_bytes())
    where = bytes(raw).find(state["params"].numpy().tobytes()[:64])
    raw[where + 3] ^= 0x10  # one bit of node 2's model
    final.write_bytes(bytes(raw))
    resumed = _launch(out, "run.iterations=60", "run.checkpoint_every=10")
    assert "iteration 40 damaged on node(s) 2" in resumed.stderr and "resuming from the checkpoint at iteration 30" in resumed.stderr
    for node in range(NODES):
        logged = [r["iteration"] for r in read_jsonl(out / "nodes" / f"node_{node:03d}.jsonl")]
        assert logged == list(range(1, 61)), node  # each iteration once: the redone ones replace the old rows
    assert [r["iteration"] for r in read_jsonl(out / "metrics.jsonl")] == [10, 20, 30, 40, 50, 60]
    assert json.loads((out / "summary.json").read_text())["iterations"] == 60
