"""Exact blame: a stalled (SIGSTOP) or killed (SIGKILL) node is named by every other node, neighbour or
not, and by the launcher's last line, through a real `qtd launch` of 4 processes on a ring. Node 0 is
the hardest case: it hosts the rendezvous store, and stopped it keeps the store's socket open without
answering, so the others must give up on the store too instead of waiting on it forever."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.harness import REPO, child_env
from tests.test_fault_tolerance import _node_processes, _stop_launch

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("how, victim", [(signal.SIGSTOP, 2), (signal.SIGKILL, 2), (signal.SIGSTOP, 0)])
def test_the_node_that_stalled_or_died_is_the_one_every_message_names(tmp_path, how, victim):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "qtd.cli.main", "launch", "configs/quickstart.yaml"]
    for override in ("topology.nodes=4", "topology.kind=ring", "run.iterations=100000", "run.progress=false",
                     "comm.timeout_s=5", "algorithm.name=dsgd", "compression.bits=16", "algorithm.schedule=constant",
                     "algorithm.alpha=0.1", f"run.out_dir={out}", "run.eval_every=1000000"):
        args += ["--set", override]
    launcher = subprocess.Popen(args, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    try:
        log = out / "nodes" / f"node_{victim:03d}.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 20):
            time.sleep(0.2)
        assert log.exists(), f"node {victim} never started training"
        nodes = _node_processes(launcher.pid)
        assert sorted(nodes) == [0, 1, 2, 3], nodes
        os.kill(nodes[victim], how)
        _, stderr = launcher.communicate(timeout=150)
    finally:
        _stop_launch(launcher)
    assert launcher.returncode != 0 and "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("qtd: node ")]
    others = [rank for rank in range(4) if rank != victim]  # two neighbours on the ring, one not
    for rank in others:
        mine = [line for line in lines if line.startswith(f"qtd: node {rank}: error:")]
        # a stalled node keeps its process: every other node times out and says whom it blames; a killed
        # one is seen by torchrun at once, which may stop the others before they notice
        assert len(mine) == (1 if how == signal.SIGSTOP else len(mine)) and len(mine) <= 1, stderr[-3000:]
        for line in mine:
            named = {int(n) for n in re.findall(r"node (\d+) (?:stopped|stalled|failed)", line)}
            assert named == {victim}, line
    final = stderr.strip().splitlines()[-1]
    assert final.startswith(f"qtd: error: the run failed: node {victim} "), final
    if how == signal.SIGSTOP:
        assert f"named by nodes {', '.join(map(str, others))}" in final, final
    else:
        assert "killed by SIGKILL" in final and "left no message" in final, final
