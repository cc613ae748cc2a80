"""Run torchrun across the machines of a one-box cluster, and leave nothing behind.

Each machine gets its namespace, address, shaped uplink and CPU cgroup (``network``, ``cgroups``); its
``torchrun`` joins the others through the c10d rendezvous hosted by machine 0's agent, exactly as on
separate hosts (``--nnodes M --rdzv-backend c10d --rdzv-endpoint <machine 0>:PORT``). While the run
goes, the quota of each machine follows the CPU model, and its CPU time and sent bytes are sampled;
at the end the report holds what the kernel measured (cgroup cpuacct/cpu.stat, ``tc -s``, veth
counters). Whatever happens (the run ends, fails, times out, or a SIGINT/SIGTERM arrives), every
process, namespace, link, qdisc and cgroup of the run is removed before the harness returns.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .cgroups import CpuGroup, weigh_run
from .measure import build_report, measured_lines
from .network import Network, machine_address
from .registry import claim_run_id, leftovers, remove_run
from .spec import ClusterSpec
from .system import ClusterError, in_netns, require_available

POLL_S = 0.05
SAMPLE_S = 0.5
FAILURE_GRACE_S = 10.0  # after one machine failed, how long the others get to notice and stop
STOP_GRACE_S = 10.0  # after SIGTERM, how long torchrun gets to stop its workers
PROBE_PORT = 29399
PROBE_S = 0.5  # bytes per probe: this many seconds at the configured rate
_RUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
            "TORCHELASTIC_RUN_ID", "GLOO_SOCKET_IFNAME")


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived (a KeyboardInterrupt, so a second one still ends the CLI cleanly)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass(frozen=True)
class Target:
    """What every machine's torchrun runs (``-m qtd.train --config ...`` or ``script.py args``), and the file
    whose first write during this run marks a machine as training: its throttling starts then (for qtd, a
    node's ``nodes/node_XXX.jsonl`` after its first iteration, so imports, data loading and just-in-time
    compilation run at the startup share). ``{machine}`` and ``{rank}`` (the first rank on that machine)
    in ``ready_file`` are filled in per machine. After ``release_file`` is written (qtd: the run's
    summary.json), the machine runs at the startup share again, so that shutting down (interpreter exit,
    closing logs) is not slowed to the model's speed; the measured share covers the window in between."""

    argv: tuple[str, ...]
    ready_file: str | None = None
    report: Path | None = None
    release_file: str | None = None  # its first write lifts the CPU model again (e.g. the run's summary.json)


@dataclass
class MachineLog:
    """What the harness saw of one machine."""

    machine: int
    throttle_start: float | None = None  # monotonic
    release: float | None = None  # when the release file appeared (the CPU model stopped applying)
    usage_at_release_ns: int = 0
    share: float | None = None  # the cores its quota allows now (None: no limit)
    next_change_s: float | None = None  # seconds after throttle_start at which the CPU model redraws
    usage_at_start_ns: int = 0
    end: float | None = None
    usage_at_end_ns: int = 0
    exit_code: int | None = None
    # (s since launch, share, cfs_quota_us and cfs_period_us read back from the kernel right after writing)
    quota_timeline: list[tuple[float, float | None, int, int]] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (s since launch, cpu ns, sent bytes)


def _say(message: str) -> None:
    print(f"qtd cluster: {message}", file=sys.stderr, flush=True)


class ClusterRun:
    def __init__(self, spec: ClusterSpec, target: Target, port: int = 29400, timeout_s: float = 0.0,
                 probe_links: bool = False, python: str = sys.executable, env: dict[str, str] | None = None,
                 say: Callable[[str], None] = _say) -> None:
        self.spec, self.target, self.port = spec, target, port
        self.timeout_s, self.probe_links, self.python = timeout_s, probe_links, python
        self.base_env = dict(os.environ if env is None else env)
        self.say = say
        self.run_id = ""
        self.launch = 0.0
        self.store: subprocess.Popen | None = None
        self.logs: list[MachineLog] = []
        self.weight = 0.0  # the run group's weight per process, as last set
        self.weight_timeline: list[tuple[float, float]] = []

    # -- the whole run ---------------------------------------------------------------------------------
    def run(self) -> int:
        """Set up, run, measure, remove. Returns 0 when every machine's torchrun succeeded, 1 when one
        failed, 128 + signal number when interrupted; a ClusterError when the cluster could not be built."""
        require_available()
        dead, _ = leftovers()
        if dead:
            self.say(f"leftovers of earlier runs on this machine: {', '.join(dead)} (remove them with "
                     "`qtd cluster cleanup`)")
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

        def interrupt(signum, frame):
            raise Interrupted(signum)

        main_thread = threading.current_thread() is threading.main_thread()  # handlers only work there
        for sig in previous if main_thread else ():
            signal.signal(sig, interrupt)
        procs: list[subprocess.Popen] = []
        try:
            state = claim_run_id(f"{self.spec.machines} machines: {' '.join(self.target.argv)}")
            self.run_id = state.run_id
            self.say(f"{self.run_id}: {self.spec.machines} machines x {self.spec.nproc_per_node} processes, "
                     f"{self.spec.cpu.describe()}, {self.spec.links.describe()}")
            try:
                return self._run(procs)
            except Interrupted as exc:
                self.say(f"{self.run_id}: stopped by {exc}; stopping the machines and removing the cluster")
                self._stop(procs)
                return 128 + exc.signum
        finally:
            for sig in previous if main_thread else ():  # no second interruption in the middle of the removal
                signal.signal(sig, lambda signum, frame: None)
            try:
                if self.run_id:
                    self._stop(procs, grace_s=0.0)
                    if self.store is not None:
                        self._stop([self.store], grace_s=0.0)
                        self.store.stdin.close()
                        self.store.stdout.close()
                    problems = remove_run(self.run_id)
                    if problems:
                        self.say(f"{self.run_id}: could not remove {', '.join(problems)}; run `qtd cluster cleanup`")
                    else:
                        self.say(f"{self.run_id}: removed its processes, namespaces, links, qdiscs and cgroups")
            finally:
                for sig, handler in previous.items() if main_thread else ():
                    signal.signal(sig, handler)

    def _run(self, procs: list[subprocess.Popen]) -> int:
        spec = self.spec
        network = Network(self.run_id, spec.machines, spec.links)
        network.create()
        groups = [CpuGroup(self.run_id, f"m{m}") for m in range(spec.machines)]
        logs = self.logs = [MachineLog(m) for m in range(spec.machines)]
        for group in groups:
            group.create()
            group.set_weight(spec.nproc_per_node)
        probes = self._probe(network) if self.probe_links else None
        self._start_store(network)
        ready = [self._path(self.target.ready_file, m) for m in range(spec.machines)]
        release = [self._path(self.target.release_file, m) for m in range(spec.machines)]
        before = {path: _file_id(path) for path in ready + release if path is not None}
        launch = self.launch = time.monotonic()
        for m, group in enumerate(groups):
            if ready[m] is None:
                self._throttle(m, group, logs[m], launch, launch)
            else:
                self._set_share(group, logs[m], spec.startup_share)
        self._reweigh(logs)
        for m, group in enumerate(groups):
            procs.append(self._start_machine(m, group, network))
        self._watch(procs, groups, logs, network, ready, release, before, launch)
        wall = time.monotonic() - launch
        report = build_report(self, network, groups, logs, probes, wall)
        if self.target.report is not None:
            self.target.report.parent.mkdir(parents=True, exist_ok=True)
            self.target.report.write_text(json.dumps(report, indent=2) + "\n")
        for line in measured_lines(report):
            self.say(f"{self.run_id}: {line}")
        failed = sorted((log for log in logs if log.exit_code != 0), key=lambda log: log.end or 0.0)
        if failed:  # the first to fail is the cause; the others stopped because of it
            self.say(f"{self.run_id}: machine {failed[0].machine}'s torchrun exited with code {failed[0].exit_code} "
                     "first (its message is above)")
            return 1
        return 0

    # -- machines --------------------------------------------------------------------------------------
    def _path(self, template: str | None, m: int) -> Path | None:
        if not template:
            return None
        return Path(template.format(machine=m, rank=m * self.spec.nproc_per_node))

    def _start_store(self, network: Network) -> None:
        """The c10d rendezvous store, served from machine 0's address by a process of its own (outside the
        machines' cgroups) that outlives every agent: when the store lives in an agent, as torchrun's
        is_host does, the last agents to leave find it gone and print C++ tracebacks."""
        group = CpuGroup(self.run_id, "rdzv")
        group.create()
        code = ("import datetime, sys; from torch.distributed import TCPStore; "
                f"store = TCPStore('{machine_address(0)}', {self.port}, is_master=True, wait_for_workers=False, "
                "multi_tenant=True, timeout=datetime.timedelta(hours=24)); print('ready', flush=True); sys.stdin.read()")
        env = {k: v for k, v in self.base_env.items() if k not in _RUN_ENV}
        store = subprocess.Popen(in_netns(network.machines[0].namespace, [self.python, "-c", code]), env=env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True,
                                 preexec_fn=lambda: group.join(os.getpid()))
        self.store = store
        if store.stdout.readline().strip() != "ready":
            raise ClusterError(f"the rendezvous store on machine 0 did not start (exit code {store.wait()})")

    def _start_machine(self, m: int, group: CpuGroup, network: Network) -> subprocess.Popen:
        spec, net = self.spec, network.machines[m]
        env = {k: v for k, v in self.base_env.items() if k not in _RUN_ENV}
        env.setdefault("OMP_NUM_THREADS", "1")
        # A fresh store per run, not torchrun's shared one (pytorch/pytorch#135712); the workers then meet at
        # machine 0's address, which --local-addr gives them.
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
        env["GLOO_SOCKET_IFNAME"] = net.device
        env["QTD_CLUSTER_MACHINE"] = str(m)
        command = [self.python, "-m", "qtd.engine.torchrun", "--nnodes", str(spec.machines),
                   "--nproc-per-node", str(spec.nproc_per_node), "--rdzv-backend", "c10d",
                   "--rdzv-endpoint", f"{machine_address(0)}:{self.port}", "--rdzv-id", self.run_id,
                   "--rdzv-conf", "is_host=0", "--local-addr", net.address,
                   "--max-restarts", "0", *self.target.argv]
        # The child joins its cgroups before it execs: torchrun and every worker it starts are throttled.
        return subprocess.Popen(in_netns(net.namespace, command), env=env, start_new_session=True,
                                preexec_fn=lambda: group.join(os.getpid()))

    def _throttle(self, m: int, group: CpuGroup, log: MachineLog, now: float, launch: float) -> None:
        """Apply the CPU model's share for ``now`` (the first one when throttling begins)."""
        cpu = self.spec.cpu
        if log.throttle_start is None:
            log.throttle_start, log.usage_at_start_ns = now, group.usage_ns()
        elapsed = now - log.throttle_start
        share = cpu.share(m, elapsed)
        self._set_share(group, log, share)
        log.quota_timeline.append((round(now - launch, 3), share, *group.quota()))
        log.next_change_s = cpu.next_change_s(elapsed)
        self._reweigh(self.logs)

    def _set_share(self, group: CpuGroup, log: MachineLog, share: float | None) -> None:
        group.set_quota(self.spec.cpu.quota_us(share), self.spec.cpu.period_us)
        log.share = share

    def _reweigh(self, logs: Sequence[MachineLog]) -> None:
        """The run's CPU weight: ``spec.weight`` per process while the quotas together fit in this box's
        cores (then a busy box cannot starve the machines below their shares, and the run still takes
        no more than those shares), an ordinary process's weight otherwise (e.g. while starting up)."""
        shares = [log.share for log in logs]
        capped = all(share is not None for share in shares) and sum(shares) <= (os.cpu_count() or 1)
        weight = self.spec.weight if capped else 1.0
        if weight != self.weight:
            weigh_run(self.run_id, self.spec.machines * self.spec.nproc_per_node, weight)
            self.weight = weight
            self.weight_timeline.append((round(time.monotonic() - self.launch, 3), weight))

    def _watch(self, procs, groups, logs, network, ready, release, before, launch) -> None:
        """Until every torchrun has exited: start throttling machines as they become ready, follow the CPU
        model, sample CPU time and bytes, learn which ranks run where; end a failed or overdue run."""
        spec = self.spec
        next_sample = launch
        failed_at = None
        while True:
            now = time.monotonic()
            for m, proc in enumerate(procs):
                log = logs[m]
                if log.exit_code is None and proc.poll() is not None:
                    log.exit_code, log.end, log.usage_at_end_ns = proc.returncode, now, groups[m].usage_ns()
                    if proc.returncode != 0 and failed_at is None:
                        failed_at = now
                if log.exit_code is not None:
                    continue
                if log.throttle_start is None:
                    if ready[m] is not None and _file_id(ready[m]) not in (None, before[ready[m]]):
                        self._throttle(m, groups[m], log, now, launch)
                elif log.release is None:
                    if release[m] is not None and _file_id(release[m]) not in (None, before[release[m]]):
                        log.release, log.usage_at_release_ns = now, groups[m].usage_ns()
                        self._set_share(groups[m], log, spec.startup_share)
                        self._reweigh(logs)
                    elif log.next_change_s is not None and now - log.throttle_start >= log.next_change_s:
                        self._throttle(m, groups[m], log, now, launch)
                if len(log.ranks) < spec.nproc_per_node:
                    log.ranks = _ranks_in(groups[m])
            if all(log.exit_code is not None for log in logs):
                return
            if now >= next_sample:
                sent = network.sent_bytes()
                for m, log in enumerate(logs):
                    if log.exit_code is None:
                        log.samples.append((round(now - launch, 3), groups[m].usage_ns(), sent[m]))
                next_sample = now + SAMPLE_S
            if failed_at is not None and now - failed_at > FAILURE_GRACE_S:
                self.say(f"{self.run_id}: a machine failed {FAILURE_GRACE_S:g} s ago and the others still run "
                         "(torchrun waits for every machine at its exit barrier); stopping them")
                self._stop(procs)
            if self.timeout_s and now - launch > self.timeout_s:
                self._stop(procs)
                raise ClusterError(f"the run did not finish within --timeout-s {self.timeout_s:g} s; it was "
                                   "stopped and the cluster removed (raise --timeout-s for longer runs)")
            time.sleep(POLL_S)

    def _stop(self, procs: Sequence[subprocess.Popen], grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM every torchrun (it stops its workers), SIGKILL what is left after ``grace_s``."""
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_s
        for proc in procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                pass
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()

    # -- measuring -------------------------------------------------------------------------------------
    def _probe(self, network: Network) -> list[dict]:
        """TCP goodput of every machine's uplink, one link at a time (machine m sends to m+1 alone, so no
        other transfer's packets or acks share its queues)."""
        n = self.spec.machines
        env = {k: v for k, v in self.base_env.items() if k not in _RUN_ENV}
        module = [self.python, "-m", "qtd.cluster.probe"]
        results = []
        for m in range(n if n > 1 else 0):
            to = (m + 1) % n
            rate = self.spec.links.pair_mbit.get((m, to), self.spec.links.uplink_mbit[m])
            if self.spec.links.uplink_mbit[m] is not None and rate is not None:
                rate = min(rate, self.spec.links.uplink_mbit[m])
            size = int(min(max((rate or 1000.0) * 1e6 / 8 * PROBE_S, 1 << 16), 32 << 20))
            sink = subprocess.Popen(in_netns(network.machines[to].namespace, [*module, "sink", str(PROBE_PORT)]),
                                    env=env, stdout=subprocess.PIPE, text=True)
            try:
                if sink.stdout.readline().strip() != "ready":
                    raise ClusterError(f"the link probe's receiver on machine {to} did not start")
                sent = subprocess.run(in_netns(network.machines[m].namespace, [
                    *module, "send", machine_address(to), str(PROBE_PORT), str(size)]), env=env,
                    capture_output=True, text=True, timeout=120)
                if sent.returncode != 0:
                    raise ClusterError(f"the link probe from machine {m} to {to} failed: "
                                       f"{(sent.stderr.strip().splitlines() or ['no message'])[-1]}")
                sink.communicate(timeout=30)
            finally:
                if sink.poll() is None:
                    sink.kill()
                    sink.wait()
            data = json.loads(sent.stdout.strip().splitlines()[-1])
            results.append({"from": m, "to": to, "bytes": data["bytes"], "seconds": data["seconds"],
                            "goodput_bit_s": data["bytes"] * 8 / data["seconds"]})
        return results

def _file_id(path: Path | None) -> tuple[int, int, int] | None:
    """(inode, mtime, size) of a file that has something in it; None for a missing or empty file."""
    if path is None:
        return None
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size) if st.st_size else None


def _ranks_in(group: CpuGroup) -> list[int]:
    """The RANK of every torchrun worker in ``group`` (from its environment)."""
    ranks = []
    for pid in group.pids():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        for item in environ:
            if item.startswith(b"RANK="):
                ranks.append(int(item[5:]))
    return sorted(ranks)
