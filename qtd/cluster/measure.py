"""What a one-box cluster run measured: per machine, the CPU share its cgroup used, its uplink as tc reads
it back, and the bytes it sent (rates over the throttled window and the peak over 1 s)."""

from __future__ import annotations

import os
from typing import Any

from .network import machine_address


def build_report(run: Any, network: Any, groups: list, logs: list, probes: Any, wall: float) -> dict:
    """What the kernel measured of every machine of ``run`` (a ClusterRun), for its report file."""
    spec = run.spec
    tc = network.tc_stats()
    sent, received = network.sent_bytes(), network.received_bytes()
    machines = []
    for m, (group, log) in enumerate(zip(groups, logs)):
        stop, stop_usage = (log.release, log.usage_at_release_ns) if log.release else (log.end, log.usage_at_end_ns)
        window = (stop - log.throttle_start) if log.throttle_start is not None and stop else None
        cpu_window = (stop_usage - log.usage_at_start_ns) / 1e9 if window else None
        entry: dict[str, Any] = {
            "machine": m, "namespace": network.machines[m].namespace, "address": network.machines[m].address,
            "ranks": log.ranks, "exit_code": log.exit_code, "cgroup": str(group.cpu),
            "quota_timeline": [list(entry) for entry in log.quota_timeline],
            "throttled_from_s": None if log.throttle_start is None else round(log.throttle_start - run.launch, 3),
            "released_at_s": None if log.release is None else round(log.release - run.launch, 3),
            "window_s": window, "cpu_s_in_window": cpu_window,
            "measured_share": cpu_window / window if window else None,
            "cpu_s_total": group.usage_ns() / 1e9, "cpu_stat": group.throttling(),
            "sent_bytes": sent[m], "received_bytes": received[m],
            "uplink_mbit": spec.links.uplink_mbit[m], "tc": tc[m],
            "sent_bit_s_in_window": _window_rate(log, run.launch), "sent_bit_s_peak_1s": _peak_rate(log),
            "samples": [list(s) for s in log.samples],
        }
        classes = tc[m].get("classes", {})
        if "1:1" in classes:
            entry["uplink_rate_read_back_bit_s"] = classes["1:1"]["rate_bit"]
        machines.append(entry)
    return {"cluster_id": run.run_id, "machines": spec.machines, "nproc_per_node": spec.nproc_per_node,
            "cpu_model": spec.cpu.describe(), "cpu_period_us": spec.cpu.period_us, "links": spec.links.describe(),
            "rendezvous": f"c10d at {machine_address(0)}:{run.port}", "target": list(run.target.argv),
            "cpu_weight_timeline": [list(w) for w in run.weight_timeline], "wall_s": wall,
            "load_average": [round(x, 2) for x in os.getloadavg()], "link_probe": probes, "nodes": machines}


def measured_lines(report: dict) -> list[str]:
    """One line per machine: the CPU share used of its quota, its uplink, what it sent."""
    lines = []
    for node in report["nodes"]:
        share = node["measured_share"]
        timeline = node["quota_timeline"]
        quota = ("never throttled" if not timeline else "unlimited" if timeline[-1][1] is None
                 else f"{timeline[-1][1]:g}")
        rate = node.get("uplink_rate_read_back_bit_s")
        peak = node["sent_bit_s_peak_1s"]
        lines.append(f"machine {node['machine']} (ranks {node['ranks']}): CPU "
                     f"{'-' if share is None else f'{share:.3f}'} cores used of {quota}, uplink "
                     f"{'unshaped' if rate is None else f'{rate / 1e6:g} Mbit/s'}, sent {node['sent_bytes']:,} B"
                     f"{'' if peak is None else f' (peak {peak / 1e6:.2f} Mbit/s over 1 s)'}")
    return lines


def _window_rate(log: Any, launch: float) -> float | None:
    """The mean send rate while the machine was throttled (from the samples)."""
    if log.throttle_start is None:
        return None
    inside = [s for s in log.samples if s[0] >= log.throttle_start - launch]
    if len(inside) < 2:
        return None
    (t0, _, b0), (t1, _, b1) = inside[0], inside[-1]
    return (b1 - b0) * 8 / (t1 - t0) if t1 > t0 else None


def _peak_rate(log: Any, span_s: float = 1.0) -> float | None:
    """The highest send rate over any ``span_s`` window of the samples (the shaped link's rate when busy)."""
    best = None
    samples = log.samples
    j = 0
    for i in range(len(samples)):
        while j < len(samples) and samples[j][0] - samples[i][0] < span_s - 1e-6:
            j += 1
        if j >= len(samples):
            break
        dt = samples[j][0] - samples[i][0]
        rate = (samples[j][2] - samples[i][2]) * 8 / dt
        best = rate if best is None or rate > best else best
    return best
