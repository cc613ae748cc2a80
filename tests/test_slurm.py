"""launch/slurm.sbatch submitted to a real slurmctld (one machine, loopback) and run to the end."""

import json
import sys
from pathlib import Path

import pytest

from qtd.metrics import read_jsonl
from tests.harness import REPO, child_env, free_port
from tests.slurm_cluster import SlurmCluster, SlurmUnavailable

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SCRIPT = REPO / "launch" / "slurm.sbatch"


@pytest.fixture(scope="module")
def slurm():
    cluster = SlurmCluster()
    try:
        cluster.start()
    except SlurmUnavailable as exc:
        pytest.skip(f"no SLURM cluster on this machine: {exc}")
    yield cluster
    cluster.stop()


def _submit(slurm: SlurmCluster, tmp_path: Path, args: list[str], sbatch_args: list[str] = ()) -> tuple[dict, str]:
    job = slurm.submit(SCRIPT, args, sbatch_args=["--nodes=1", f"--output={tmp_path}/slurm-%j.out", *sbatch_args],
                       env=child_env({"PYTHON": sys.executable, "RDZV_PORT": str(free_port())}), cwd=REPO)
    info = slurm.wait(job, timeout=150)
    return info, (tmp_path / f"slurm-{job}.out").read_text()


def test_sbatch_trains_with_one_torchrun_per_machine(slurm, tmp_path):
    out = tmp_path / "run"
    info, log = _submit(slurm, tmp_path, [
        "configs/quickstart.yaml", "--set", "topology.nodes=2", "--set", "run.iterations=20",
        "--set", "run.eval_every=10", "--set", "run.checkpoint_every=10", "--set", "run.progress=false",
        "--set", f"run.out_dir={out}"], sbatch_args=["--ntasks-per-node=2"])
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log[-4000:] + slurm.logs()
    assert "1 machines x 2 processes" in log  # processes per machine from the allocation (--ntasks-per-node)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["nodes"] == 2 and summary["iterations"] == 20
    assert 0.0 <= summary["eval_accuracy"] <= 1.0
    assert [row["iteration"] for row in read_jsonl(out / "metrics.jsonl")] == [10, 20]
    assert (out / "config.yaml").is_file()


def test_sbatch_with_a_bad_config_fails_fast_with_one_clear_line(slurm, tmp_path):
    info, log = _submit(slurm, tmp_path, ["configs/quickstart.yaml", "--set", "compression.bits=12"])
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0", log
    assert "qtd: error: compression.bits=12 is not allowed" in log
    assert "Traceback" not in log and "rendezvous at" not in log  # refused before srun started anything
