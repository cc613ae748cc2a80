"""The committed benchmark results carry the summary keys their issues name, and the README quotes them.

A rerun of a benchmark rewrites its result file; these checks then say which README figures to update,
so the README never shows a number that no committed result file holds.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
README = (REPO / "README.md").read_text()

REQUIRED = {
    "compress_throughput": ("quant_pack_gbps", "unpack_dequant_gbps", "copy_gbps"),
    "wallclock": ("time_to_target_s", "speedup_vs_dsgd", "speedup_vs_qdsgd", "speedup_vs_allreduce_sgd",
                  "speedup_vs_async_dsgd"),
    "paper_reproduction": ("time_to_target_s", "speedup_vs_dsgd", "speedup_vs_qdsgd", "speedup_vs_async_dsgd"),
    "sim_speed": ("iterations_per_s", "run_s", "vmap_speedup_over_loop"),
    "ps_compression": ("test_accuracy", "upload_bytes", "wire_bytes", "accuracy_gap_topk_ef",
                       "byte_reduction_topk_ef"),
    "faults": ("trials", "completed_or_clear_error", "hangs", "lost_or_spliced"),
    "real_cluster": ("time_to_target_s", "speedup_vs_ddp", "speedup_vs_dsgd", "speedup_vs_ddp_fair_weather",
                     "levels", "fair_weather"),
    "elastic": ("trials", "survived", "mean_seconds_lost_per_failure", "accuracy_gap_vs_uninterrupted"),
    "deep_gossip": ("final_consensus_error", "final_eval_accuracy", "consensus_ratio_quantimed_over_quantimed_choco",
                    "accuracy_gap_vs_dsgd_points"),
}


def summary(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())["summary"]


def quoted(value: float, digits: int, suffix: str = "") -> str:
    return f"{value:,.{digits}f}{suffix}"


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_result_file_has_the_summary_keys_and_a_plot(name):
    data = summary(name)
    missing = [key for key in REQUIRED[name] if key not in data]
    assert not missing, f"benchmarks/results/{name}.json lacks summary keys {missing}"
    assert (RESULTS / f"{name}.png").is_file()
    assert f"benchmarks/{name}.py" in README, f"the README does not show how to rerun {name}"


def test_readme_quotes_the_compression_throughput():
    data = summary("compress_throughput")
    for bits in ("1", "2", "4", "8"):
        row = (f"| {bits} | {quoted(data['quant_pack_gbps'][bits], 2)} GB/s | "
               f"{quoted(data['unpack_dequant_gbps'][bits], 2)} GB/s |")
        assert row in README, f"README row for {bits} bits should start {row!r}"
    assert f"{data['copy_gbps']:.1f} GB/s" in README


def test_readme_quotes_the_wallclock_speedups():
    data = summary("wallclock")
    for other in ("qdsgd", "dsgd", "async_dsgd", "allreduce_sgd"):
        assert f"(**{data[f'speedup_vs_{other}']:.2f}x**)" in README, f"wallclock speedup vs {other}"
    assert f"**{data['time_to_target_s']['quantimed']:.1f} s**" in README


def test_readme_quotes_the_paper_reproduction():
    data = summary("paper_reproduction")
    for other in ("qdsgd", "dsgd", "async_dsgd"):
        assert f"(**{data[f'speedup_vs_{other}']:.2f}x**)" in README, f"paper reproduction speedup vs {other}"
    assert f"**{quoted(data['time_to_target_s']['quantimed'], 0)} s**" in README
    assert f"L\\* = {data['target_loss']:.4f}" in README.replace("L* = ", "L\\* = ")


def test_readme_quotes_the_extended_paper_study():
    data = summary("paper_reproduction")
    best = data["best_qtd_method"]
    assert f"**{quoted(data['time_to_target_s'][best], 0)} s**" in README
    for other in ("dsgd", "qdsgd", "async_dsgd", "choco"):
        value, target = data[f"best_speedup_vs_{other}"], data["beyond_targets"][f"best_speedup_vs_{other}"]
        assert f"| {target:g}x | **{value:.2f}x** |" in README, f"extended study vs {other}"
        assert data["meets_beyond_targets"][f"best_speedup_vs_{other}"] == (value >= target)
    if data["auto_deadline_vs_best_fixed"] is None:  # the README says why the automatic deadline fell short
        assert "`auto_deadline_vs_best_fixed` is null" in README
    for method in ("quantimed", "quantimed_choco"):
        assert f"**{data['auto_from_best_start_vs_best_fixed'][method]:.2f}x**" in README, method
    hours = json.loads((RESULTS / "paper_reproduction.json").read_text())["settings"]["runs_wall_s"] / 3600
    assert f"{hours:.1f} CPU-hours of simulated runs" in README


def test_readme_quotes_the_simulator_speed():
    data = summary("sim_speed")
    seconds = data["run_s"]
    for algorithm in ("allreduce_sgd", "async_dsgd", "quantimed"):
        assert f"take {seconds[algorithm]:.0f} s" in README or f"to {seconds[algorithm]:.0f} s" in README \
            or f"takes {seconds[algorithm]:.0f} s" in README, algorithm
    assert f"{data['vmap_speedup_over_loop']:.1f}x faster than with a Python loop" in README


def test_readme_quotes_the_ps_compression_table():
    data = summary("ps_compression")
    accuracy = data["test_accuracy"]
    for method, label in (("dense", "dense AMSGrad (all-reduce)"), ("topk_ef", "TopK 1% + error feedback"),
                          ("blocksign_ef", "Block-Sign + error feedback")):
        assert re.search(rf"\| {re.escape(label)} \| {accuracy[method]:.2f}% \|", README), method
    assert f"{data['byte_reduction_topk_ef']:.1f}× less" in README


def test_real_cluster_records_every_machines_measured_share_and_link_and_the_readme_quotes_it():
    data = json.loads((RESULTS / "real_cluster.json").read_text())
    summary, settings = data["summary"], data["settings"]
    assert settings["emulation"].startswith("off") and not settings["quick"]
    for regime, methods in settings["measured"].items():
        shares = settings["regimes"][regime]["cpu_share"]
        for method, machines in methods.items():
            assert [m["cpu_share_quota"] for m in machines] == shares, (regime, method)
            for machine in machines:  # read back from the kernel: never above the quota (5% for accounting)
                assert 0 < machine["cpu_share_measured"] <= machine["cpu_share_quota"] * 1.05, (regime, method)
                assert machine["uplink_rate_tc_bit_s"] == settings["regimes"][regime]["uplink_mbit"] * 1e6
    order = ["quantimed", "qdsgd", "dsgd", "async_dsgd", "allreduce_sgd", "ddp", "ddp_fp16"]
    times = summary["time_to_target_s"]
    assert f"| **{summary['target_loss']:.3f} (target)** | **{times['quantimed']:.1f} s** |" in README
    for method in order[1:]:
        assert f"{times[method]:.1f} s ({summary[f'speedup_vs_{method}']:.2f}x)" in README.replace("**", ""), method
    for level, row in summary["levels"].items():
        if float(level) != summary["target_loss"]:
            assert f"| {float(level):.3f} | " + " | ".join(f"{row[m]:.1f} s" for m in order) + " |" in README
    assert f"(**{summary['speedup_vs_ddp_fair_weather']:.2f}x**" in README


def test_fault_injection_never_hung_or_lost_a_run_and_the_readme_says_so():
    data = summary("faults")
    assert data["hangs"] == 0 and data["lost_or_spliced"] == 0 and data["unclear_error"] == 0
    assert data["completed_or_clear_error"] == data["trials"]
    assert f"All {data['trials']} trials" in README and f"the full run ({data['completed']})" in README
    assert f"clear `qtd: error:` line ({data['clear_error']})" in README


def test_readme_quotes_the_deep_gossip_table():
    data = summary("deep_gossip")
    accuracy, consensus = data["final_eval_accuracy"], data["final_consensus_error"]
    for method, label in (("dsgd_32bit", "DSGD"), ("quantimed_choco_2bit", "**QuanTimed-CHOCO** (γ = 0.3)")):
        assert re.search(rf"\| {re.escape(label)} \| \d+ \| [^|]+ \| {100 * accuracy[method]:.1f}% \|", README), method
    assert f"| **{consensus['quantimed_choco_2bit']:.2f}** |" in README
    assert f"stay {data['consensus_ratio_quantimed_over_quantimed_choco']:.0f}x closer" in README
    assert f"within {data['accuracy_gap_vs_dsgd_points']:.1f} points" in README
    assert data["chosen_settings"]["quantimed_choco_2bit"] == ["algorithm.gamma=0.3"]


def test_paper_reproduction_quick_runs_end_to_end(tmp_path, mnist_dir):
    """The benchmark script itself keeps working (10 nodes, short runs; about a minute)."""
    command = [sys.executable, str(REPO / "benchmarks" / "paper_reproduction.py"), "--quick", "--out", str(tmp_path),
               "--cache", str(tmp_path / "cache"), "--data-root", str(mnist_dir)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=500)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "paper_reproduction.json").read_text())
    assert data["summary"]["time_to_target_s"]["dsgd"] > 0
    assert (tmp_path / "paper_reproduction.png").is_file()


def test_readme_quotes_the_elastic_trials():
    data = summary("elastic")
    assert f"**{data['survived']} of {data['trials']}** SIGKILL trials" in README
    assert f"**{data['mean_seconds_lost_per_failure']:.2f} s** lost per failure" in README
    assert f"(at most {data['max_seconds_lost_per_failure']:.2f} s)" in README
    assert f"within **{data['accuracy_gap_vs_uninterrupted']:.2f} points**" in README
    assert f"({data['max_accuracy_gap_vs_uninterrupted']:.2f} at most)" in README
    assert f"{data['stop_survived']} of {data['stop_trials']} SIGSTOP trials" in README
    assert f"**{data['mean_seconds_lost_per_stop']:.2f} s** each" in README

