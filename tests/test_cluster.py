"""`qtd cluster`: real namespaces, shaped links and CPU cgroups on this box, real torchrun processes.

The harness tests need root, iproute2 and the cgroup v1 cpu/cpuacct controllers; where any is missing
they skip with the harness's own reason. The option checks and pure parts run everywhere.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qtd.cluster.cli import cluster_command
from qtd.cluster.network import parse_tc_classes
from qtd.cluster.spec import CpuModel
from qtd.errors import ConfigError
from qtd.metrics import read_jsonl
from tests.harness import REPO, child_env

CONFIG = str(REPO / "configs" / "quickstart.yaml")
PREFIX = "qtdc-"


def _cluster_reason() -> str | None:
    from qtd.cluster import unavailable_reason

    reason = unavailable_reason()
    if reason:
        return reason
    check = subprocess.run([sys.executable, "-m", "qtd.cli.main", "cluster", "check"], env=child_env(),
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    return None if check.returncode == 0 else check.stderr.strip() or check.stdout.strip()


@pytest.fixture(scope="module")
def cluster_ok():
    reason = _cluster_reason()
    if reason:
        pytest.skip(reason)


def _leftovers(run_id: str) -> list[str]:
    """Everything of ``run_id`` still on this machine, looked up with the system's own tools."""
    found = [f"namespace {n}" for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                                          check=True).stdout.split() if n.startswith(run_id)]
    found += [f"link {n.name}" for n in Path("/sys/class/net").iterdir() if n.name.startswith(run_id)]
    for root in (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup/cpuacct")):
        found += [f"cgroup {p}" for p in root.glob(f"{run_id}*")]
    found += [f"hosts dir {p}" for p in Path("/etc/netns").glob(f"{run_id}*")] if Path("/etc/netns").is_dir() else []
    found += [f"state {p}" for p in Path("/run/qtd-cluster").glob(f"{run_id}*")]
    return found


def _processes_with(text: str, exclude: tuple[int, ...] = ()) -> list[int]:
    """Processes (other than this one and ``exclude``) whose command line contains ``text``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) not in (os.getpid(), *exclude):
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                pass
    return pids


def _run_id(stderr: str) -> str:
    for line in stderr.splitlines():
        if line.startswith(f"qtd cluster: {PREFIX}"):
            return line.split()[2].rstrip(":")
    raise AssertionError(f"no run id in the harness's output:\n{stderr[-3000:]}")


def _qtd_run(out: Path, extra: list[str], overrides: list[str]) -> list[str]:
    sets = ["topology.nodes=4", "topology.kind=ring", "run.progress=false", "run.resume=never",
            "run.checkpoint_every=0", f"run.out_dir={out}", "comm.timeout_s=60", *overrides]
    return [sys.executable, "-m", "qtd.cli.main", "cluster", "run", *extra, CONFIG,
            *sum((["--set", s] for s in sets), [])]


# -- option checks and pure parts (no root needed) ---------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["--cpu-share", "0.5,x"], "--cpu-share '0.5,x' is not allowed: 'x' is not a number"),
    (["--cpu-share", "0.5,0.25"], "give one value for all 4 machines or exactly 4 values"),
    (["--cpu-share", "0.01"], "the smallest share at --cpu-period-ms 20 is 0.05 cores"),
    (["--cpu-share-range", "0.5,0.1"], "give LOW,HIGH with LOW <= HIGH"),
    (["--cpu-share", "0.5", "--cpu-share-range", "0.1,0.5"], "not both"),
    (["--uplink-mbit", "0"], "each value must be > 0"),
    (["--pair-mbit", "0-0=4"], "name two different machines in 0..3"),
    (["--pair-mbit", "0:1=4"], "write A-B=RATE"),
    (["--machines", "3"], "topology.nodes=4 but 3 machines x 1 processes = 3"),
    (["--throttle-after", "run/{node}.jsonl"], "use only {machine} and {rank} as placeholders"),
])
def test_bad_options_end_in_one_message_naming_the_option(args, expected, tmp_path):
    argv = ["run", *args, CONFIG, "--set", "topology.nodes=4", "--set", f"run.out_dir={tmp_path}"]
    with pytest.raises(ConfigError) as info:
        cluster_command(argv)
    assert expected in str(info.value)


def test_a_run_needs_a_config_or_a_target_and_a_target_needs_machines():
    with pytest.raises(ConfigError, match="either a qtd CONFIG or a torchrun target"):
        cluster_command(["run", "--cpu-share", "0.5"])
    with pytest.raises(ConfigError, match="--machines is needed"):
        cluster_command(["run", "--", "script.py"])


def test_the_cli_refuses_bad_input_with_one_line():
    done = subprocess.run([sys.executable, "-m", "qtd.cli.main", "cluster", "run", "--cpu-share", "abc", CONFIG],
                          env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "qtd: error: --cpu-share 'abc' is not allowed: 'abc' is not a number; give one value or 8 comma-separated "
        "values"]


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to an unprivileged user needs root")
def test_without_root_it_refuses_with_one_line(tmp_path):
    tmp_path.chmod(0o777)
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                           "qtd.cli.main", "cluster", "run", "--cpu-share", "0.5", CONFIG, "--set",
                           "topology.nodes=2", "--set", f"run.out_dir={tmp_path}/run"],
                          env=child_env({"HOME": str(tmp_path)}), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "qtd: error: qtd cluster needs root: it creates network namespaces, veth links, tc qdiscs and CPU cgroups "
        "(run it as root, e.g. with sudo)"]


def test_redrawn_shares_stay_in_range_change_on_schedule_and_repeat_with_the_seed():
    model = CpuModel("uniform", low=0.1, high=0.5, redraw_s=2.0, seed=3)
    draws = [[model.share(m, t) for t in (0.0, 1.9, 2.0, 5.5)] for m in range(3)]
    for machine in draws:
        assert all(0.1 <= s <= 0.5 for s in machine)
        assert machine[0] == machine[1] and machine[1] != machine[2]  # constant within a period, then redrawn
    assert draws[0] != draws[1]  # machines draw independently
    assert draws == [[CpuModel("uniform", low=0.1, high=0.5, redraw_s=2.0, seed=3).share(m, t)
                      for t in (0.0, 1.9, 2.0, 5.5)] for m in range(3)]
    assert model.next_change_s(4.1) == 6.0 and CpuModel("fixed", shares=(0.2,)).next_change_s(4.1) is None
    assert model.quota_us(0.25) == 5000 and model.quota_us(None) == -1


def test_tc_class_statistics_are_parsed():
    text = """class htb 1:1 root rate 16Mbit ceil 16Mbit burst 1600b cburst 1600b
 Sent 956166 bytes 1517 pkt (dropped 0, overlimits 59 requeues 0)
 backlog 0b 0p requeues 0
class htb 1:2 parent 1:1 prio 0 rate 500Kbit ceil 16Mbit burst 1600b cburst 1600b
 Sent 12 bytes 1 pkt (dropped 3, overlimits 4 requeues 0)
"""
    classes = parse_tc_classes(text)
    assert classes["1:1"] == {"rate_bit": 16e6, "ceil_bit": 16e6, "bytes": 956166, "packets": 1517, "drops": 0,
                              "overlimits": 59}
    assert classes["1:2"]["rate_bit"] == 500e3 and classes["1:2"]["drops"] == 3


# -- the harness for real ------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.usefixtures("cluster_ok")
def test_a_quarter_core_node_computes_fewer_samples_within_the_deadline(tmp_path):
    """4 machines on a ring with 1 Mbit/s uplinks; machine 3 gets a quarter core, the others half a core.
    Exchange first, then compute until T_d (overlap off), so an iteration is the measured exchange time
    plus T_d: the slow node fills the same deadline with proportionally fewer samples, and nobody waits
    longer for it."""
    out, deadline = tmp_path / "run", 0.25
    command = _qtd_run(out, ["--cpu-share", "0.5,0.5,0.5,0.25", "--uplink-mbit", "1", "--probe-links",
                             "--timeout-s", "300"],
                       ["algorithm.name=quantimed", f"algorithm.deadline_s={deadline}", "algorithm.overlap=false",
                        "compression.bits=16", "run.iterations=30", "run.eval_every=10"])
    done = subprocess.run(command, env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    run_id = _run_id(done.stderr)
    assert _leftovers(run_id) == []

    report = json.loads((out / "cluster.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    nodes = report["nodes"]
    assert [node["ranks"] for node in nodes] == [[0], [1], [2], [3]]  # machine m runs graph node m
    assert report["rendezvous"].startswith("c10d at 10.231.0.100:")
    # The kernel holds the quotas and the link rates asked for, and they bit.
    assert [node["quota_timeline"][0][1:] for node in nodes] == [[0.5, 10000, 20000]] * 3 + [[0.25, 5000, 20000]]
    assert all(node["uplink_rate_read_back_bit_s"] == 1e6 for node in nodes)
    slow = nodes[3]
    assert slow["measured_share"] <= 0.25 * 1.1 + 0.01, slow
    assert slow["cpu_stat"]["nr_throttled"] > 0.05 * slow["cpu_stat"]["nr_periods"], slow["cpu_stat"]  # the cap bit
    for probe in report["link_probe"]:  # TCP goodput over a 1 Mbit/s link: the rate less headers
        assert 0.75e6 < probe["goodput_bit_s"] < 1.05e6, probe

    # Samples follow the CPU each node really got.
    samples = summary["samples_per_iteration"]
    fast_samples = statistics.mean(samples[:3])
    fast_share = statistics.mean(node["measured_share"] for node in nodes[:3])
    cpu_ratio, sample_ratio = slow["measured_share"] / fast_share, samples[3] / fast_samples
    assert sample_ratio < 0.8, (samples, [n["measured_share"] for n in nodes])
    assert 0.5 * cpu_ratio < sample_ratio < 1.5 * cpu_ratio, (samples, [n["measured_share"] for n in nodes])

    # Every node, the slow one included, spends T_d computing and the exchange waiting, nothing more.
    message_bits = 2 * (2 * 3760 + 40) * 8  # two neighbours, 16-bit copies of the 64-50-10 MLP, headers
    for rank in range(4):
        rows = read_jsonl(out / "nodes" / f"node_{rank:03d}.jsonl")[2:]  # past the warm-up
        times = [row["time_s"] for row in rows]
        iteration = statistics.median(b - a for a, b in zip(times, times[1:]))
        compute = statistics.median(row["compute_s"] for row in rows)
        wait = statistics.median(row["wait_s"] for row in rows)
        assert deadline * 0.95 <= compute <= deadline + 0.08, (rank, compute)
        assert wait >= 0.5 * message_bits / 1e6, (rank, wait)  # the shaped link, not loopback speed
        assert deadline + wait <= iteration * 1.02 + 0.01 and iteration <= 1.25 * (deadline + wait) + 0.05, \
            (rank, iteration, compute, wait)


def _start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, env=child_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the harness ended before {what}:\n{proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {what} within {timeout} s:\n{proc.communicate()[1][-3000:]}")
        time.sleep(0.2)


def _long_run(out: Path) -> list[str]:
    return _qtd_run(out, ["--cpu-share", "0.25", "--uplink-mbit", "4", "--timeout-s", "300"],
                    ["algorithm.name=quantimed", "algorithm.deadline_s=0.2", "run.iterations=100000",
                     "run.eval_every=50"])


@pytest.mark.slow
@pytest.mark.usefixtures("cluster_ok")
def test_ctrl_c_mid_run_stops_everything_and_leaves_nothing_behind(tmp_path):
    out, sig = tmp_path / "run", signal.SIGINT
    proc = _start(_long_run(out))
    node = out / "nodes" / "node_003.jsonl"
    _wait_for(lambda: node.exists() and len(node.read_text().splitlines()) >= 3, 180, "training", proc)
    proc.send_signal(sig)
    try:
        _, stderr = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"the harness did not stop within 90 s of {sig.name}")
    assert proc.returncode == 128 + sig, stderr[-3000:]
    run_id = _run_id(stderr)
    assert f"stopped by {sig.name}" in stderr
    assert "removed its processes, namespaces, links, qdiscs and cgroups" in stderr
    assert _leftovers(run_id) == []
    assert _processes_with(str(out)) == []
    assert "Traceback" not in stderr


@pytest.mark.slow
@pytest.mark.usefixtures("cluster_ok")
def test_sigterm_while_the_machines_start_leaves_nothing_behind(tmp_path):
    out = tmp_path / "run"
    proc = _start(_long_run(out))
    _wait_for(lambda: bool(_processes_with(str(out), exclude=(proc.pid,))), 60, "torchrun agents", proc)
    ids = {p.name[:9] for p in Path("/run/qtd-cluster").glob(f"{PREFIX}*.json")}
    proc.send_signal(signal.SIGTERM)  # what a scheduler sends
    _, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "stopped by SIGTERM" in stderr
    run_id = _run_id(stderr)
    assert run_id in ids
    assert _leftovers(run_id) == [] and _processes_with(str(out)) == []


@pytest.mark.slow
@pytest.mark.usefixtures("cluster_ok")
def test_cleanup_removes_what_a_killed_harness_left_behind(tmp_path):
    out = tmp_path / "run"
    proc = _start(_long_run(out))
    node = out / "nodes" / "node_000.jsonl"
    _wait_for(lambda: node.exists() and node.stat().st_size > 0, 180, "training", proc)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait()
    mine = [p.stem for p in Path("/run/qtd-cluster").glob(f"{PREFIX}*.json") if str(out) in p.read_text()]
    assert len(mine) == 1, mine  # the state file names the run's command line
    run_id = mine[0]
    assert any(item.startswith("namespace") for item in _leftovers(run_id))
    listing = subprocess.run([sys.executable, "-m", "qtd.cli.main", "cluster", "cleanup", "--dry-run"],
                             env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert f"{run_id}: would remove namespace {run_id}-m0" in listing.stdout
    assert _leftovers(run_id)  # a dry run removes nothing
    done = subprocess.run([sys.executable, "-m", "qtd.cli.main", "cluster", "cleanup"], env=child_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{run_id}: removed" in done.stdout
    assert _leftovers(run_id) == []
    deadline = time.monotonic() + 10
    while _processes_with(str(out)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_with(str(out)) == []


@pytest.mark.slow
@pytest.mark.usefixtures("cluster_ok")
def test_a_failed_machine_fails_the_run_and_pair_rates_and_redrawn_shares_hold(tmp_path):
    """A torchrun target of our own: every rank burns 2 s of CPU, then rank 1 exits with code 3. Two
    machines, shares redrawn every half second, 8 Mbit/s uplinks with a 2 Mbit/s pair between them."""
    script = tmp_path / "target.py"
    script.write_text("import os, sys, time\nend = time.process_time() + 2\nwhile time.process_time() < end:\n"
                      "    pass\nsys.exit(3 if os.environ['RANK'] == '1' else 0)\n")
    report = tmp_path / "cluster.json"
    done = subprocess.run([sys.executable, "-m", "qtd.cli.main", "cluster", "run", "--machines", "2",
                           "--cpu-share-range", "0.2,0.6", "--redraw-s", "0.5", "--uplink-mbit", "8",
                           "--pair-mbit", "0-1=2", "--probe-links", "--report", str(report), "--timeout-s", "200",
                           "--", str(script)], env=child_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "machine 1's torchrun exited with code 1 first" in done.stderr
    assert "qtd: error: the run failed: node 1 exited with code 3" in done.stderr
    assert _leftovers(_run_id(done.stderr)) == []
    data = json.loads(report.read_text())
    assert data["nodes"][1]["exit_code"] == 1  # machine 0 finished its work, then waited for machine 1
    for probe in data["link_probe"]:  # the pair's 2 Mbit/s, not the 8 Mbit/s uplink
        assert 1.5e6 < probe["goodput_bit_s"] < 2.1e6, probe
    for node in data["nodes"]:
        shares = [share for _, share, _, _ in node["quota_timeline"]]
        assert len(shares) >= 3 and len(set(shares)) >= 2, shares  # redrawn every half second
        assert all(0.2 <= share <= 0.6 for share in shares)
        assert node["measured_share"] < max(shares) + 0.05, (node["measured_share"], shares)  # the caps held
        if node["machine"] == 1:  # busy from start to exit (machine 0 idles at torchrun's exit barrier)
            assert node["measured_share"] > 0.15, node["measured_share"]
        classes = node["tc"]["classes"]
        assert classes["1:1"]["rate_bit"] == 8e6 and classes[f"1:{101 - node['machine']}"]["ceil_bit"] == 2e6
