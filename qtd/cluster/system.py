"""The host facilities the harness needs (root, iproute2, cgroup v1 cpu/cpuacct) and one way to call them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from ..errors import QtdError

CPU_ROOT = Path("/sys/fs/cgroup/cpu")
CPUACCT_ROOT = Path("/sys/fs/cgroup/cpuacct")
NETNS_DIR = Path("/run/netns")
COMMAND_TIMEOUT_S = 20.0


class ClusterError(QtdError):
    """The one-box cluster cannot be set up or run here; the message says what is missing."""


def run_command(args: Sequence[str], what: str, check: bool = True, timeout_s: float = COMMAND_TIMEOUT_S) -> str:
    """Run ``args`` (ip, tc, ...) and return its stdout; a failure is a ClusterError naming ``what``."""
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise ClusterError(f"{what}: {args[0]} is not installed (install iproute2: apt-get install iproute2)") from None
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{what}: `{' '.join(args)}` did not finish within {timeout_s:g} s") from None
    if check and done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip() or f"exit code {done.returncode}").splitlines()[0]
        raise ClusterError(f"{what}: `{' '.join(args)}` failed: {detail}")
    return done.stdout


def in_netns(namespace: str, args: Sequence[str]) -> list[str]:
    """``args`` run inside network namespace ``namespace``."""
    return ["ip", "netns", "exec", namespace, *args]


def unavailable_reason() -> str | None:
    """Why the harness cannot run on this machine (one sentence), or None when everything it needs is here.

    Cheap checks only: root, ip and tc, the cgroup v1 cpu and cpuacct controllers. Kernel features
    (namespaces, veth, bridge, htb) are checked by ``probe_kernel``, which creates and removes objects.
    """
    if os.geteuid() != 0:
        return ("qtd cluster needs root: it creates network namespaces, veth links, tc qdiscs and CPU cgroups "
                "(run it as root, e.g. with sudo)")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"qtd cluster needs iproute2's `{tool}` (apt-get install iproute2)"
    for root, knob in ((CPU_ROOT, "cpu.cfs_quota_us"), (CPUACCT_ROOT, "cpuacct.usage")):
        if not (root / knob).is_file():
            return (f"qtd cluster needs the cgroup v1 {root.name} controller mounted at {root} (no {root / knob}); "
                    "cgroup v2-only machines are not supported yet")
        if not os.access(root, os.W_OK):
            return f"qtd cluster cannot create cgroups under {root} (read-only mount?)"
    return None


def require_available() -> None:
    reason = unavailable_reason()
    if reason:
        raise ClusterError(reason)


def probe_kernel(prefix: str) -> None:
    """Create and remove one namespace, a veth pair in it, a bridge and an htb qdisc: a ClusterError naming
    the missing kernel feature if any step fails. Everything is named ``prefix``-something."""
    namespace, bridge, host, peer = f"{prefix}-chk", f"{prefix}-cbr", f"{prefix}-ch", f"{prefix}-cn"
    try:
        run_command(["ip", "netns", "add", namespace], "network namespaces (ip netns add)")
        run_command(["ip", "link", "add", bridge, "type", "bridge"], "bridges (the kernel's bridge module)")
        run_command(["ip", "link", "add", host, "type", "veth", "peer", "name", peer],
                    "veth pairs (the kernel's veth module)")
        run_command(["ip", "link", "set", peer, "netns", namespace], "moving a veth into a namespace")
        run_command(in_netns(namespace, ["tc", "qdisc", "add", "dev", peer, "root", "handle", "1:", "htb"]),
                    "the htb queueing discipline (sch_htb)")
    finally:
        run_command(["ip", "link", "del", host], "removing the check's veth", check=False)
        run_command(["ip", "link", "del", bridge], "removing the check's bridge", check=False)
        run_command(["ip", "netns", "del", namespace], "removing the check's namespace", check=False)
