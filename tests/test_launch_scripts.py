"""launch/single_box.sh and launch/multi_node.sh run for real (two "machines" on this box), and refuse bad
arguments with a usage message before starting anything."""

import json
import subprocess
import sys

import pytest

from qtd.metrics import read_jsonl
from tests.harness import REPO, child_env, collect, free_port

TINY = ["--set", "topology.nodes=2", "--set", "run.iterations=20", "--set", "run.eval_every=10",
        "--set", "run.progress=false"]


def _env(**extra: str) -> dict[str, str]:
    return child_env({"PYTHON": sys.executable, **extra})


def _script(name: str, args: list[str], env: dict[str, str] | None = None, timeout: float = 60):
    try:
        return subprocess.run(["bash", str(REPO / "launch" / name), *args], env=env or _env(), cwd=REPO,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{name} {' '.join(args)} did not finish within {timeout} s: {exc.stderr}") from None


def _check_run(out, nodes: int = 2, iterations: int = 20) -> None:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["nodes"] == nodes and summary["iterations"] == iterations
    assert [r["iteration"] for r in read_jsonl(out / "metrics.jsonl")] == [10, 20]


@pytest.mark.slow
def test_single_box_script_trains(tmp_path):
    result = _script("single_box.sh", ["configs/quickstart.yaml", *TINY, "--set", f"run.out_dir={tmp_path}"],
                     timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    _check_run(tmp_path)


@pytest.mark.slow
def test_multi_node_script_joins_two_machines_by_c10d_rendezvous(tmp_path):
    """Two invocations with the same settings, as on two machines: ranks are assigned on arrival."""
    args = ["--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "two-machines",
            "configs/quickstart.yaml", *TINY, "--set", f"run.out_dir={tmp_path}"]
    machines = [subprocess.Popen(["bash", str(REPO / "launch" / "multi_node.sh"), *args], env=_env(), cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for machine in collect(machines, timeout=180):
        assert machine.returncode == 0, machine.stderr[-3000:]
    _check_run(tmp_path)
    assert {json.loads(line)["iteration"] for n in (0, 1)
            for line in (tmp_path / "nodes" / f"node_{n:03d}.jsonl").read_text().splitlines()} == set(range(1, 21))


def _dry(name: str, args: list[str], **env: str) -> str:
    result = _script(name, args, _env(DRY_RUN="1", **env))
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_scripts_build_the_documented_torchrun_commands():
    single = _dry("single_box.sh", ["--max-restarts", "3", "configs/quickstart.yaml", "--set", "run.seed=4"])
    assert single.split()[1:] == ["-m", "qtd.engine.torchrun", "--standalone", "--nproc-per-node", "8",
                                  "--max-restarts", "3", "-m", "qtd.train", "--config", "configs/quickstart.yaml",
                                  "--set", "run.seed=4"]
    static = _dry("multi_node.sh", ["--node-rank", "1", "configs/quickstart.yaml"], NNODES="2",
                  RDZV_ENDPOINT="10.0.0.1:29400")
    assert "--nnodes 2 --nproc-per-node 4 --node-rank 1 --master-addr 10.0.0.1 --master-port 29400" in static
    c10d = _dry("multi_node.sh", ["--nnodes", "4", "--rdzv-endpoint", "head:29500", "--nproc-per-node", "2",
                                  "configs/quickstart.yaml"], MAX_RESTARTS="2")
    assert ("--nnodes 4 --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint head:29500 --rdzv-id qtd "
            "--max-restarts 2 -m qtd.train") in c10d


@pytest.mark.parametrize("name, args, env, message", [
    ("single_box.sh", [], {}, "give a CONFIG file"),
    ("single_box.sh", ["configs/quickstart.yaml", "--sett", "a=b"], {}, "unknown option --sett"),
    ("single_box.sh", ["configs/quickstart.yaml", "--set"], {}, "--set needs KEY=VALUE"),
    ("single_box.sh", ["configs/quickstart.yaml"], {"MAX_RESTARTS": "many"}, "--max-restarts must be a whole number"),
    ("single_box.sh", ["--nproc-per-node", "3", "configs/quickstart.yaml"], {},
     "topology.nodes=8 but 3 processes were asked for"),
    ("single_box.sh", ["configs/quickstart.yaml", "--set", "topology.nodes=0"], {},
     "qtd: error: topology.nodes=0 is not allowed"),
    ("single_box.sh", ["no/such.yaml"], {}, "qtd: error: config file 'no/such.yaml' does not exist"),
    ("multi_node.sh", ["configs/quickstart.yaml"], {"RDZV_ENDPOINT": "h:1"}, "--nnodes (or NNODES) must be"),
    ("multi_node.sh", ["--nnodes", "2", "configs/quickstart.yaml"], {}, "--rdzv-endpoint (or RDZV_ENDPOINT) must"),
    ("multi_node.sh", ["--nnodes", "2", "--rdzv-endpoint", "head", "configs/quickstart.yaml"], {},
     "must be HOST:PORT (got 'head')"),
    ("multi_node.sh", ["--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:1", "configs/quickstart.yaml"], {},
     "--node-rank must be 0..1"),
    ("multi_node.sh", ["--nnodes", "2", "--node-rank", "0", "--rdzv-endpoint", "h:1", "--max-restarts", "1",
                       "configs/quickstart.yaml"], {}, "--max-restarts needs the c10d rendezvous"),
    ("multi_node.sh", ["--nnodes", "3", "--rdzv-endpoint", "h:1", "configs/quickstart.yaml"], {},
     "topology.nodes=8 does not split evenly over 3 machines"),
    ("multi_node.sh", ["--nnodes", "2", "--nproc-per-node", "2", "--rdzv-endpoint", "h:1", "configs/quickstart.yaml"],
     {}, "topology.nodes=8 but 2 machines x 2 processes = 4"),
    ("multi_node.sh", ["--nnodes", "2", "--rdzv-endpoint", "h:1", "configs/quickstart.yaml", "--set",
                       "topology.kind=torus", "--set", "topology.nodes=6", "--set", "topology.kind=star"], {}, None),
    ("slurm.sbatch", ["configs/quickstart.yaml"], {}, "run this through sbatch"),
    ("slurm.sbatch", ["--what", "configs/quickstart.yaml"], {}, "unknown option --what"),
])
def test_bad_arguments_end_with_one_message_before_anything_starts(name, args, env, message):
    result = _script(name, args, _env(DRY_RUN="1", **env))
    if message is None:  # the last --set wins, as in qtd: a star of 6 nodes on 2 machines is fine
        assert result.returncode == 0 and "--nproc-per-node 3" in result.stdout, result.stderr
        return
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr.splitlines()[0], result.stderr
    assert "qtd.engine.torchrun" not in result.stdout and "Traceback" not in result.stderr


def test_help_prints_the_usage_and_succeeds():
    for name in ("single_box.sh", "multi_node.sh", "slurm.sbatch"):
        result = _script(name, ["--help"])
        assert result.returncode == 0 and "--max-restarts" in result.stderr and "PYTHON" in result.stderr, name
