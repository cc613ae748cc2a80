"""One machine's CPU cgroup (v1): a ``cpu`` group for the quota and a ``cpuacct`` group for the usage.

Both live at ``<controller>/<run id>/<machine>``; a process joins both before it execs, so it and every
process it starts are throttled and accounted from their first instruction.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

from .system import CPU_ROOT, CPUACCT_ROOT, ClusterError


class CpuGroup:
    """The cgroup pair of one machine. ``create`` makes it; ``remove`` kills what is left in it and removes it."""

    def __init__(self, run_id: str, name: str) -> None:
        self.run_id, self.name = run_id, name
        self.cpu = CPU_ROOT / run_id / name
        self.cpuacct = CPUACCT_ROOT / run_id / name

    def create(self) -> None:
        for path in (self.cpu, self.cpuacct):
            try:
                path.mkdir(parents=True, exist_ok=False)
            except OSError as exc:
                raise ClusterError(f"creating the CPU cgroup {path} failed: {exc.strerror}") from None

    def set_weight(self, processes: int) -> None:
        """cpu.shares as for ``processes`` ordinary processes (see ``weigh_run``)."""
        _write_shares(self.cpu, processes)

    def join(self, pid: int) -> None:
        """Move ``pid`` into both groups (its children follow)."""
        for path in (self.cpu, self.cpuacct):
            (path / "cgroup.procs").write_text(f"{pid}\n")

    def set_quota(self, quota_us: int, period_us: int) -> None:
        """cpu.cfs_quota_us over cpu.cfs_period_us (quota -1: no limit); a quota above the period is several cores."""
        try:
            (self.cpu / "cpu.cfs_period_us").write_text(f"{period_us}\n")
            (self.cpu / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
        except OSError as exc:
            raise ClusterError(f"setting the CPU quota of {self.cpu} to {quota_us}/{period_us} us failed: "
                               f"{exc.strerror}") from None

    def quota(self) -> tuple[int, int]:
        """(cfs_quota_us, cfs_period_us) as the kernel holds them."""
        return (int((self.cpu / "cpu.cfs_quota_us").read_text()), int((self.cpu / "cpu.cfs_period_us").read_text()))

    def usage_ns(self) -> int:
        """CPU time used by every process that ever ran in the group, in nanoseconds."""
        return int((self.cpuacct / "cpuacct.usage").read_text())

    def throttling(self) -> dict[str, int]:
        """cpu.stat: nr_periods, nr_throttled, throttled_time (ns)."""
        stats = {}
        for line in (self.cpu / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if value.strip().lstrip("-").isdigit():
                stats[key] = int(value)
        return stats

    def pids(self) -> list[int]:
        found: set[int] = set()
        for path in (self.cpu, self.cpuacct):
            try:
                found.update(int(p) for p in (path / "cgroup.procs").read_text().split())
            except FileNotFoundError:
                pass
        return sorted(found)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def remove(self, wait_s: float = 10.0) -> list[str]:
        """Kill what is left in the groups and remove them; returns what could not be removed."""
        problems = []
        deadline = time.monotonic() + wait_s
        while self.pids() and time.monotonic() < deadline:
            self.kill()
            time.sleep(0.05)
        for path in (self.cpu, self.cpuacct):
            problems += remove_group_dir(path, deadline)
        return problems


def weigh_run(run_id: str, processes: int, weight: float) -> None:
    """Give the run's parent group the CPU weight of ``weight`` x ``processes`` ordinary processes.

    In cgroup v1 a group competes with the root's processes as one process of weight cpu.shares (1024
    by default), so at weight 1 the cluster gets what its processes would get without cgroups. A
    higher weight lets the machines have the shares their quotas promise on a busy box; the quotas
    still cap them, so the run never takes more than the sum of its shares.
    """
    _write_shares(CPU_ROOT / run_id, processes * weight)


def _write_shares(path: Path, processes: float) -> None:
    try:
        (path / "cpu.shares").write_text(f"{min(max(round(1024 * processes), 2), 262144)}\n")
    except OSError as exc:
        raise ClusterError(f"setting the CPU weight of {path} failed: {exc.strerror}") from None


def remove_group_dir(path: Path, deadline: float) -> list[str]:
    """rmdir a cgroup directory (a just-killed process may keep it busy for a moment); missing is fine."""
    while True:
        try:
            path.rmdir()
            return []
        except FileNotFoundError:
            return []
        except OSError as exc:
            if exc.errno == errno.EBUSY and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            return [f"cgroup {path} ({exc.strerror})"]


def remove_run_groups(run_id: str, wait_s: float = 10.0) -> list[str]:
    """Remove every machine group of ``run_id`` and the run's parent groups; returns what stayed."""
    problems = []
    for root in (CPU_ROOT, CPUACCT_ROOT):
        parent = root / run_id
        if not parent.is_dir():
            continue
        for child in sorted(p for p in parent.iterdir() if p.is_dir()):
            problems += CpuGroup(run_id, child.name).remove(wait_s)
        problems += remove_group_dir(parent, time.monotonic() + wait_s)
    return sorted(set(problems))
