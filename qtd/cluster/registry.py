"""Run ids, the state file of each live run, and removal of everything a run created.

Every object a run creates is named ``qtdc-XXXX...`` (its run id): namespaces ``qtdc-XXXX-m<i>``, links
``qtdc-XXXX-br``/``-h<i>``/``-n<i>``, hosts files ``/etc/netns/qtdc-XXXX-m<i>/hosts``, cgroups
``/sys/fs/cgroup/{cpu,cpuacct}/qtdc-XXXX/m<i>``. The state file ``/run/qtd-cluster/qtdc-XXXX.json`` names the harness process that owns them; objects whose owner
is gone are leftovers (the harness was SIGKILLed, or the machine lost power mid-run), which
``qtd cluster cleanup`` removes.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from .cgroups import remove_run_groups
from .network import ETC_NETNS, kill_namespace_pids, list_etc_dirs, list_links, list_namespaces
from .system import CPU_ROOT, CPUACCT_ROOT, run_command

PREFIX = "qtdc-"
STATE_DIR = Path("/run/qtd-cluster")
_ID = re.compile(r"^(qtdc-[0-9a-f]{4})(?:-|$)")


def run_id_of(name: str) -> str | None:
    match = _ID.match(name)
    return match[1] if match else None


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (tells a live owner from a reused pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return stat.rpartition(")")[2].split()[19]


def all_run_ids() -> set[str]:
    """Run ids that own anything on this machine: state files, namespaces, links, cgroups."""
    names = [p.stem for p in STATE_DIR.glob(f"{PREFIX}*.json")] if STATE_DIR.is_dir() else []
    names += list_namespaces(PREFIX) + list_links(PREFIX) + list_etc_dirs(PREFIX)
    for root in (CPU_ROOT, CPUACCT_ROOT):
        if root.is_dir():
            names += [p.name for p in root.iterdir() if p.name.startswith(PREFIX)]
    return {run_id for run_id in map(run_id_of, names) if run_id}


@dataclass(frozen=True)
class RunState:
    run_id: str
    pid: int
    started: str | None  # the owner's process start time
    description: str

    @property
    def path(self) -> Path:
        return STATE_DIR / f"{self.run_id}.json"

    def owner_alive(self) -> bool:
        return self.started is not None and _process_start(self.pid) == self.started


def claim_run_id(description: str) -> RunState:
    """A fresh run id, claimed for this process by creating its state file (before anything else exists)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    while True:
        run_id = f"{PREFIX}{secrets.token_hex(2)}"
        if run_id in all_run_ids():
            continue
        state = RunState(run_id, os.getpid(), _process_start(os.getpid()), description)
        try:
            fd = os.open(state.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # another harness took it a moment ago
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps({"run_id": run_id, "pid": state.pid, "started": state.started,
                                     "description": description, "created_unix": time.time()}) + "\n")
        return state


def read_state(run_id: str) -> RunState | None:
    path = STATE_DIR / f"{run_id}.json"
    try:
        data = json.loads(path.read_text())
        return RunState(run_id, int(data["pid"]), data.get("started"), str(data.get("description", "")))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def run_objects(run_id: str) -> list[str]:
    """What exists of ``run_id``, as 'kind name' strings."""
    found = [f"namespace {n}" for n in list_namespaces(run_id + "-")]
    found += [f"link {n}" for n in list_links(run_id + "-")]
    found += [f"hosts file {ETC_NETNS / n / 'hosts'}" for n in list_etc_dirs(run_id + "-")]
    for root in (CPU_ROOT, CPUACCT_ROOT):
        if (root / run_id).is_dir():
            found.append(f"cgroup {root / run_id}")
    if (STATE_DIR / f"{run_id}.json").exists():
        found.append(f"state file {STATE_DIR / (run_id + '.json')}")
    return found


def remove_run(run_id: str, wait_s: float = 10.0) -> list[str]:
    """Kill every process of ``run_id`` (in its cgroups and namespaces), remove its links, namespaces,
    cgroups and state file; returns what could not be removed (empty when all is gone)."""
    for root in (CPU_ROOT, CPUACCT_ROOT):  # the cgroups hold every process the run started
        for procs in (root / run_id).glob("*/cgroup.procs"):
            try:
                pids = [int(p) for p in procs.read_text().split()]
            except FileNotFoundError:
                continue
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    problems: list[str] = []
    namespaces = list_namespaces(run_id + "-")
    for namespace in namespaces:
        problems += [f"process {pid} in namespace {namespace}" for pid in kill_namespace_pids(namespace, wait_s)]
    # Host ends of the veth pairs first (each takes its peer, and the peer's qdisc, along), then the bridge.
    for link in sorted(list_links(run_id + "-"), key=lambda name: name.endswith("-br")):
        run_command(["ip", "link", "del", link], f"removing link {link}", check=False)
    for namespace in namespaces:
        run_command(["ip", "netns", "del", namespace], f"removing namespace {namespace}", check=False)
    for name in list_etc_dirs(run_id + "-"):
        shutil.rmtree(ETC_NETNS / name, ignore_errors=True)
    problems += remove_run_groups(run_id, wait_s)
    problems += [f"directory {ETC_NETNS / n}" for n in list_etc_dirs(run_id + "-")]
    problems += [f"namespace {n}" for n in list_namespaces(run_id + "-")]
    problems += [f"link {n}" for n in list_links(run_id + "-")]
    if not problems:
        (STATE_DIR / f"{run_id}.json").unlink(missing_ok=True)
    return problems


def leftovers() -> tuple[list[str], list[str]]:
    """(run ids whose owner is gone, run ids of live runs)."""
    dead, live = [], []
    for run_id in sorted(all_run_ids()):
        state = read_state(run_id)
        (live if state is not None and state.owner_alive() else dead).append(run_id)
    return dead, live
