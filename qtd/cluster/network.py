"""The machines' network: one namespace per machine, a veth pair from it to one bridge, htb on its uplink.

Machine m is namespace ``<run id>-m<m>`` with address 10.231.0.(100 + m) on its veth ``<run id>-n<m>``;
the other end ``<run id>-h<m>`` sits on the bridge ``<run id>-br`` in the root namespace, which has no
address, so runs never collide with each other or with the host's routes. What a machine sends leaves
through an htb qdisc on its veth: class 1:1 caps the whole uplink, class 1:2 takes what has no pair rate,
and class 1:(100 + j) caps what goes to machine j. Deleting the namespace deletes the veth and its qdisc.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from .spec import LinkModel
from .system import NETNS_DIR, in_netns, run_command

SUBNET = "10.231.0"
ETC_NETNS = Path("/etc/netns")  # `ip netns exec NS` bind-mounts /etc/netns/NS/* over /etc/*
UNSHAPED_BIT = 100_000_000_000  # the root class rate when only pair rates are given
QUANTUM_BYTES = 60_000
GSO_LINK_S = 0.002  # explicit, so htb neither warns about its rate/r2q default nor starves a class


def machine_address(machine: int) -> str:
    return f"{SUBNET}.{100 + machine}"


@dataclass(frozen=True)
class MachineNet:
    """The network names and address of one machine."""

    namespace: str
    device: str  # the veth inside the namespace
    host_device: str  # its peer on the bridge
    address: str


def machine_net(run_id: str, machine: int) -> MachineNet:
    return MachineNet(namespace=f"{run_id}-m{machine}", device=f"{run_id}-n{machine}",
                      host_device=f"{run_id}-h{machine}", address=machine_address(machine))


def bridge_name(run_id: str) -> str:
    return f"{run_id}-br"


def _bits(mbit: float) -> str:
    return f"{round(mbit * 1e6)}bit"


class Network:
    """Creates the bridge and every machine's namespace, veth, address and shaping (``registry.remove_run``
    removes them)."""

    def __init__(self, run_id: str, machines: int, links: LinkModel) -> None:
        self.run_id, self.links = run_id, links
        self.bridge = bridge_name(run_id)
        self.machines = [machine_net(run_id, m) for m in range(machines)]

    def create(self) -> None:
        run_command(["ip", "link", "add", self.bridge, "type", "bridge"], f"creating the bridge {self.bridge}")
        # Bridged frames must not meet the host's iptables (a FORWARD policy of DROP would cut every link).
        run_command(["ip", "link", "set", self.bridge, "type", "bridge", "nf_call_iptables", "0",
                     "nf_call_ip6tables", "0", "nf_call_arptables", "0"], "keeping iptables off the bridge",
                    check=False)
        run_command(["ip", "link", "set", self.bridge, "up"], f"bringing up the bridge {self.bridge}")
        for m, net in enumerate(self.machines):
            run_command(["ip", "netns", "add", net.namespace], f"creating the network namespace {net.namespace}")
            run_command(["ip", "link", "add", net.host_device, "type", "veth", "peer", "name", net.device,
                         "netns", net.namespace], f"creating the veth pair of machine {m}")
            run_command(["ip", "link", "set", net.host_device, "master", self.bridge, "up"],
                        f"attaching machine {m} to the bridge")
            inside = [["ip", "addr", "add", f"{net.address}/24", "dev", net.device],
                      ["ip", "link", "set", net.device, "up"], ["ip", "link", "set", "lo", "up"]]
            for args in inside:
                run_command(in_netns(net.namespace, args), f"configuring machine {m}'s network")
            self._hosts_file(m, net)
            if self.links.shaped(m):
                self._shape(m, net)

    def _hosts_file(self, m: int, net: MachineNet) -> None:
        """/etc/hosts as machine m sees it: every machine by name, and this host's name as its own address,
        so reverse lookups of peers succeed at once (c10d warns otherwise) and nothing asks a DNS server."""
        directory = ETC_NETNS / net.namespace
        directory.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1 localhost", "::1 localhost", "::ffff:127.0.0.1 localhost",
                 f"{net.address} {socket.gethostname()}"]
        for other in self.machines:  # servers listening on :: see IPv4 peers as ::ffff:a.b.c.d
            lines += [f"{other.address} {other.namespace}", f"::ffff:{other.address} {other.namespace}"]
        (directory / "hosts").write_text("\n".join(lines) + "\n")

    def _shape(self, m: int, net: MachineNet) -> None:
        uplink = self.links.uplink_mbit[m]
        root_bit = _bits(uplink) if uplink is not None else f"{UNSHAPED_BIT}bit"
        pairs = sorted((b, rate) for (a, b), rate in self.links.pair_mbit.items() if a == m)
        share = 1.0 / (len(pairs) + 1)  # guaranteed rates that add up to the uplink; classes borrow up to ceil
        top = uplink if uplink is not None else UNSHAPED_BIT / 1e6
        tc = ["tc"]
        commands = [
            [*tc, "qdisc", "add", "dev", net.device, "root", "handle", "1:", "htb", "default", "2"],
            [*tc, "class", "add", "dev", net.device, "parent", "1:", "classid", "1:1", "htb", "rate", root_bit,
             "ceil", root_bit, "quantum", str(QUANTUM_BYTES)],
            [*tc, "class", "add", "dev", net.device, "parent", "1:1", "classid", "1:2", "htb",
             "rate", _bits(top * share), "ceil", root_bit, "quantum", str(QUANTUM_BYTES)],
        ]
        for b, rate in pairs:
            ceil = min(rate, top)
            commands += [
                [*tc, "class", "add", "dev", net.device, "parent", "1:1", "classid", f"1:{100 + b}", "htb",
                 "rate", _bits(ceil * share), "ceil", _bits(ceil), "quantum", str(QUANTUM_BYTES)],
                [*tc, "filter", "add", "dev", net.device, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                 "match", "ip", "dst", f"{machine_address(b)}/32", "flowid", f"1:{100 + b}"],
            ]
        # Segmentation offload hands htb packets of up to 64 KB, which it lets through whole: at a few
        # Mbit/s that is a burst of a hundred milliseconds. Packets of at most ~2 ms of link time keep
        # the shaping smooth at any rate, at a cost of a few thousand packets per second.
        slowest = min([top] + [rate for _, rate in pairs])
        gso = int(min(max(slowest * 1e6 / 8 * GSO_LINK_S, 1500), 65536))
        commands.append(["ip", "link", "set", "dev", net.device, "gso_max_size", str(gso)])
        for args in commands:
            run_command(in_netns(net.namespace, args), f"shaping machine {m}'s uplink (htb)")

    def sent_bytes(self) -> list[int]:
        """Bytes each machine has sent out of its namespace (its veth peer's received bytes)."""
        return [_read_counter(net.host_device, "rx_bytes") for net in self.machines]

    def received_bytes(self) -> list[int]:
        return [_read_counter(net.host_device, "tx_bytes") for net in self.machines]

    def tc_stats(self) -> list[dict]:
        """Per machine, what ``tc -s class show`` reports for its uplink classes (rates read back from the kernel)."""
        stats = []
        for m, net in enumerate(self.machines):
            if not self.links.shaped(m):
                stats.append({"shaped": False})
                continue
            text = run_command(in_netns(net.namespace, ["tc", "-s", "class", "show", "dev", net.device]),
                               f"reading machine {m}'s tc statistics")
            stats.append({"shaped": True, "classes": parse_tc_classes(text)})
        return stats


def _read_counter(device: str, counter: str) -> int:
    try:
        return int(Path(f"/sys/class/net/{device}/statistics/{counter}").read_text())
    except (FileNotFoundError, ValueError):
        return 0


_CLASS = re.compile(r"^class htb (\S+) .*?rate (\S+) ceil (\S+)")
_SENT = re.compile(r"Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+)")
_UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12}


def parse_rate(text: str) -> float:
    """tc's '16Mbit' -> 16e6 bit/s."""
    match = re.match(r"^([0-9.]+)([A-Za-z]*)$", text)
    if not match or match[2].lower() not in _UNITS:
        raise ValueError(f"unexpected tc rate {text!r}")
    return float(match[1]) * _UNITS[match[2].lower()]


def parse_tc_classes(text: str) -> dict[str, dict]:
    """``tc -s class show`` text -> {classid: {rate_bit, ceil_bit, bytes, packets, drops, overlimits}}."""
    classes: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        head = _CLASS.match(line.strip())
        if head:
            current = head[1]
            classes[current] = {"rate_bit": parse_rate(head[2]), "ceil_bit": parse_rate(head[3])}
            continue
        sent = _SENT.search(line)
        if sent and current is not None:
            classes[current].update(bytes=int(sent[1]), packets=int(sent[2]), drops=int(sent[3]),
                                    overlimits=int(sent[4]))
    return classes


def list_namespaces(prefix: str = "") -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def list_etc_dirs(prefix: str) -> list[str]:
    if not ETC_NETNS.is_dir():
        return []
    return sorted(p.name for p in ETC_NETNS.iterdir() if p.name.startswith(prefix))


def list_links(prefix: str) -> list[str]:
    return sorted(p.name for p in Path("/sys/class/net").iterdir() if p.name.startswith(prefix))


def namespace_pids(namespace: str) -> list[int]:
    out = run_command(["ip", "netns", "pids", namespace], "listing a namespace's processes", check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def kill_namespace_pids(namespace: str, wait_s: float = 10.0) -> list[int]:
    """SIGKILL every process in ``namespace`` (a namespace with processes outlives ``ip netns del``) and
    wait until they are gone; returns those still there after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        pids = namespace_pids(namespace)
        if not pids or time.monotonic() > deadline:
            return pids
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
