"""Wall-clock time to a target loss on a real slow, heterogeneous cluster on one box, torch DDP included.

    python benchmarks/real_cluster.py            # the committed result (about an hour on 2 cores; needs root)
    python benchmarks/real_cluster.py --quick    # QuanTimed, DSGD and DDP, 8 s runs, no tuning or link probes
                                                 # (3 to 4 minutes on a busy 2-core box);
                                                 # writes to runs/bench_quick/ unless --out is given
    python benchmarks/real_cluster.py --out DIR  # where real_cluster.json and real_cluster.png go

Nothing is emulated inside qtd (``emulation.stragglers`` and ``emulation.links`` are off): every method
runs as 4 machines of `qtd cluster run` (one network namespace, one CPU cgroup and one shaped uplink per
machine; torchrun across them with the c10d rendezvous), so slow nodes really have less CPU and slow
links really carry fewer bytes per second. The methods: QuanTimed-DSGD, Q-DSGD, DSGD, async DSGD and
all-reduce SGD from qtd, and torch's own DistributedDataParallel (benchmarks/_ddp_peer.py: plain DDP and
SGD) with and without its ``fp16_compress_hook``, all on the same model (qtd's small CNN, 421,642
parameters), data (MNIST, 2,000 training images per node, 500 held out for the eval loss), batch size
and step-size grid, launched by the same harness.

Two regimes:
- ``paper``: the paper's, scaled to 4 machines: CPU shares 0.45, 0.30, 0.15 and 0.05 cores (9x apart, 0.95
  cores in all, so the run fits beside other work on a 2-core box) and 16 Mbit/s uplinks, on which one
  16-bit model copy (843 KB) takes 0.42 s, several mean batch times (B = 20 at the mean share; the
  calibration below measures it, ``copy16_in_mean_batches`` in the result).
- ``fair_weather``: 0.25 cores each and 1 Gbit/s uplinks (a 16-bit copy takes 7 ms).

QuanTimed-DSGD's deadline follows one rule in both: T_d = the larger of one 4-bit exchange on the uplink
(two messages on the ring) and one mean batch time (B samples at the mean share, from the CPU time the
model takes on this machine, measured at the start). Each method first gets the same tuning (three short
runs over its effective step size); the best one (lowest final eval loss) runs for the full budget. A
run whose model turns non-finite counts as diverged (a tuning trial then loses; a final run is replaced
by the next smaller step of the grid, and ``settings.diverged_final_runs`` says so); a run that fails
otherwise is tried once more (``settings.failed_runs_retried``).

The target loss of each regime is fixed by a rule before any speedup is computed: the highest final
eval loss of all methods (a loss every method reaches); two easier levels, half and three quarters of
the way down from the initial model's loss to the target, are shown too. Time to a level is the first
training second (evaluation pauses excluded) at which the eval loss is at or below it, interpolated
between evaluation points, counted from the end of the first iteration: every method's first iteration
is its warm-up (qtd's quantized methods load their compiled numba kernels, DDP sets up its buckets) and
is reported apart as ``warmup_s``. A machine runs at 0.45 cores (1.8 for all four, within the box's 2)
until it has finished that first iteration (the harness throttles it once its first per-iteration
record is written) and again once the run's summary is written. Every final run also reports, per
machine, the CPU share the cgroup measured (cpuacct over the throttled window), the uplink rate tc
reads back, a TCP probe of the link before the run, the peak 1 s send rate and the bytes its veth
carried (``wire_bytes``, evaluation traffic included; ``bytes_sent`` is the algorithm's own count).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NAME = "real_cluster"
sys.path.insert(0, str(REPO))

from _common import OUT_HELP, final_loss, find_mnist, results_dir, time_to_level  # noqa: E402

NODES = 4
TOPOLOGY = "ring"  # degree 2: every gossip iteration sends two model copies through a machine's uplink
BATCH = 20
REGIMES: dict[str, dict[str, Any]] = {
    "paper": {"cpu_share": [0.45, 0.30, 0.15, 0.05], "uplink_mbit": 16.0},
    "fair_weather": {"cpu_share": [0.25, 0.25, 0.25, 0.25], "uplink_mbit": 1000.0},
}
METHODS: dict[str, list[str]] = {  # qtd overrides; the ddp ones run benchmarks/_ddp_peer.py
    "quantimed": ["algorithm.name=quantimed", "compression.bits=4"],
    "qdsgd": ["algorithm.name=qdsgd", "compression.bits=4"],
    "dsgd": ["algorithm.name=dsgd", "compression.bits=16"],
    "async_dsgd": ["algorithm.name=async_dsgd", "compression.bits=16", "algorithm.max_in_flight=1"],
    "allreduce_sgd": ["algorithm.name=allreduce_sgd", "compression.bits=32"],
    "ddp": ["algorithm.name=allreduce_sgd", "compression.bits=32"],  # what DDP computes; ddp_peer.py does it
    "ddp_fp16": ["algorithm.name=allreduce_sgd", "compression.bits=16"],
}
DDP = {"ddp": [], "ddp_fp16": ["--fp16-hook"]}
# Three effective gradient steps for every method: alpha for the unquantized ones and DDP's lr, alpha * eps
# (eps = 0.5) for the quantized ones.
EFFECTIVE_STEPS = (0.05, 0.1, 0.2)
STARTUP_SHARE = 0.45  # cores per machine before its first iteration and after the run's summary
FAILURES: list[dict[str, Any]] = []  # runs that failed (not diverged) and were tried again
DIVERGED_FINALS: list[str] = []  # final runs that diverged and were replaced by the next smaller step
QUICK_METHODS = {"paper": ["quantimed", "dsgd", "ddp"], "fair_weather": ["quantimed", "ddp"]}


def grid(method: str) -> list[list[str]]:
    if method in ("quantimed", "qdsgd"):
        return [[f"algorithm.alpha={step / 0.5:g}", "algorithm.eps=0.5"] for step in EFFECTIVE_STEPS]
    return [[f"algorithm.alpha={step:g}"] for step in EFFECTIVE_STEPS]


def calibrate_batch_s(seconds: float = 2.0) -> float:
    """CPU seconds of one forward and backward pass of B samples of the model on this machine (thread CPU
    time, so other work on the box does not inflate it: a share of s cores then takes this / s)."""
    import torch
    import torch.nn.functional as F

    from qtd.config import load_config
    from qtd.models import build_model

    torch.set_num_threads(1)
    config = load_config(REPO / "configs" / "quickstart.yaml", ["model.name=cnn"])
    model = build_model(config.model, (1, 28, 28), 10)
    x, y = torch.randn(BATCH, 1, 28, 28), torch.randint(0, 10, (BATCH,))
    times = []
    end = time.monotonic() + seconds
    while time.monotonic() < end or len(times) < 10:
        start = time.thread_time()
        F.cross_entropy(model(x), y, reduction="sum").backward()
        times.append(time.thread_time() - start)
    return statistics.median(times[3:])


def regime_settings(name: str, batch_full_core_s: float, params: int) -> dict[str, Any]:
    from qtd.compress import message_nbytes

    regime = REGIMES[name]
    shares, uplink = regime["cpu_share"], regime["uplink_mbit"]
    mean_batch_s = batch_full_core_s / (sum(shares) / len(shares))
    copy16_s = message_nbytes(params, 16) * 8 / (uplink * 1e6)
    exchange4_s = 2 * message_nbytes(params, 4) * 8 / (uplink * 1e6)  # two neighbours on the ring
    return {"cpu_share": shares, "uplink_mbit": uplink, "mean_batch_s": round(mean_batch_s, 4),
            "slowest_batch_s": round(batch_full_core_s / min(shares), 4), "copy16_s": round(copy16_s, 4),
            "copy16_in_mean_batches": round(copy16_s / mean_batch_s, 2), "exchange4_s": round(exchange4_s, 4),
            "deadline_s": round(max(exchange4_s, mean_batch_s), 3)}


def iteration_estimate(method: str, regime: dict[str, Any]) -> float:
    """Seconds per iteration from the time model, only to space the evaluations of a first run."""
    slow, copy16, exchange4 = regime["slowest_batch_s"], regime["copy16_s"], regime["exchange4_s"]
    if method == "quantimed":
        return regime["deadline_s"] + 0.1
    if method == "qdsgd":
        return max(slow, exchange4)
    if method == "dsgd":
        return max(slow, 2 * copy16)
    if method == "async_dsgd":
        return regime["mean_batch_s"] + 2 * copy16
    per_value = 2 if method == "ddp_fp16" else 4
    return slow + 1.5 * copy16 * per_value / 2  # ring all-reduce moves 2 (n-1)/n = 1.5 copies


def base_overrides(settings: dict[str, Any], regime: dict[str, Any]) -> list[str]:
    s = settings
    return [
        f"topology.kind={TOPOLOGY}", f"topology.nodes={NODES}", f"run.seed={s['seed']}",
        "data.name=mnist_idx", f"data.root={s['data_root']}", "data.partition=iid",
        f"data.test_fraction={s['test_fraction']}", f"data.eval_samples={s['eval_samples']}",
        "model.name=cnn", "algorithm.schedule=constant", f"algorithm.batch_size={BATCH}",
        f"algorithm.deadline_s={regime['deadline_s']}", "algorithm.micro_batch_size=5", "algorithm.overlap=true",
        "emulation.stragglers=false", "emulation.links=false",
        "run.iterations=1000000", "run.checkpoint_every=0", "run.progress=false", "comm.timeout_s=180",
    ]


class Diverged(Exception):
    """The model became non-finite (a step size too large for this method): a result, not a failure."""


def diverged(out: Path) -> int | None:
    """The first iteration at which a node's training loss was not finite, if any."""
    from qtd.metrics import read_jsonl

    first = None
    for path in sorted((out / "nodes").glob("node_*.jsonl")):
        for row in read_jsonl(path):
            loss = row.get("train_loss")
            if loss is not None and not math.isfinite(loss) and row.get("samples"):
                first = row["iteration"] if first is None else min(first, row["iteration"])
                break
    return first


def run_method(method: str, extra: list[str], budget_s: float, regime_name: str, settings: dict[str, Any],
               out: Path, seconds_per_iteration: float | None, final: bool, probe: bool,
               retries: int = 1) -> dict[str, Any]:
    """One run in the harness. A model that turns non-finite raises Diverged; any other failure is tried
    once more (the box is shared; the result file lists every retry) before the benchmark stops."""
    regime = settings["regimes"][regime_name]
    per_iteration = seconds_per_iteration or iteration_estimate(method, regime)
    points = settings["eval_points"] if final else settings["tune_eval_points"]
    eval_every = max(1, round(budget_s / per_iteration / points))
    overrides = base_overrides(settings, regime) + METHODS[method] + extra + [
        f"run.time_budget_s={budget_s}", f"run.eval_every={eval_every}", f"run.out_dir={out}", "run.resume=never"]
    if method == "async_dsgd":  # asynchronous nodes evaluate at agreed training times
        overrides.append(f"run.eval_every_s={budget_s / points:.4f}")
    harness = [sys.executable, "-m", "qtd.cli.main", "cluster", "run",
               "--cpu-share", ",".join(f"{s:g}" for s in regime["cpu_share"]),
               "--uplink-mbit", f"{regime['uplink_mbit']:g}", "--report", str(out / "cluster.json"),
               # the 4 machines start up within the box's 2 cores, so the run's CPU weight holds from the start
               "--startup-share", f"{STARTUP_SHARE:g}",
               "--timeout-s", f"{budget_s * 8 + 600:.0f}", *(["--probe-links"] if probe else [])]
    sets = sum((["--set", o] for o in overrides), [])
    config = str(REPO / "configs" / "quickstart.yaml")
    if method in DDP:
        command = harness + ["--machines", str(NODES), "--throttle-after", str(out / "nodes" / "node_{rank:03d}.jsonl"),
                             "--release-after", str(out / "summary.json"), "--", str(REPO / "benchmarks" / "_ddp_peer.py"), "--config", config, *sets, *DDP[method]]
    else:
        command = harness + [config, *sets]
    started = time.monotonic()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=budget_s * 8 + 900)
    if result.returncode != 0:
        where = diverged(out)
        label = f"{regime_name} {method} {' '.join(extra)}"
        if where is not None:
            print(f"  {regime_name:12s} {method:14s} {' '.join(extra):36s} diverged at iteration {where} "
                  f"({time.monotonic() - started:.0f} s wall)", flush=True)
            raise Diverged(f"{label}: the model became non-finite at iteration {where}")
        (out.parent / f"{out.name}.failed.log").write_text(result.stderr)
        if retries > 0:
            print(f"  {label} failed (exit code {result.returncode}); trying once more; its log is in "
                  f"{out.parent / (out.name + '.failed.log')}", flush=True)
            FAILURES.append({"run": label, "exit_code": result.returncode, "stderr_tail": result.stderr[-1500:]})
            return run_method(method, extra, budget_s, regime_name, settings, out.with_name(out.name + "_retry"),
                              seconds_per_iteration, final, probe, retries - 1)
        raise SystemExit(f"{label} failed (exit code {result.returncode}):\n{result.stderr[-4000:]}")
    from qtd.metrics import read_jsonl

    rows = read_jsonl(out / "metrics.jsonl")
    if not all(math.isfinite(row["eval_loss"]) for row in rows):  # e.g. DDP keeps going with a NaN model
        raise Diverged(f"{regime_name} {method} {' '.join(extra)}: the eval loss became non-finite")
    summary = json.loads((out / "summary.json").read_text())
    cluster = json.loads((out / "cluster.json").read_text())
    warmup = statistics.mean(read_jsonl(out / "nodes" / f"node_{rank:03d}.jsonl")[0]["time_s"] for rank in range(NODES))
    print(f"  {regime_name:12s} {method:14s} {' '.join(extra):36s} iterations {summary['iterations']:5d}  "
          f"final loss {rows[-1]['eval_loss']:.4f}  acc {rows[-1]['eval_accuracy']:.4f}  "
          f"({time.monotonic() - started:.0f} s wall, load {os.getloadavg()[0]:.1f})", flush=True)
    return {"method": method, "overrides": extra, "summary": summary, "cluster": cluster, "warmup_s": warmup,
            "curve": [{"time_s": max(r["time_s"] - warmup, 0.0), "eval_loss": r["eval_loss"],
                       "eval_accuracy": r["eval_accuracy"], "iteration": r["iteration"],
                       "bytes_sent": r["bytes_sent"]} for r in rows]}


def measured_machines(run: dict[str, Any]) -> list[dict[str, Any]]:
    """What the kernel measured for every machine of a run: CPU share, link rate, bytes."""
    probes = {p["from"]: p for p in run["cluster"].get("link_probe") or []}
    samples = run["summary"].get("samples_per_iteration") or [None] * NODES
    machines = []
    for node in run["cluster"]["nodes"]:
        m = node["machine"]
        stat = node["cpu_stat"]
        machines.append({
            "machine": m, "ranks": node["ranks"], "cpu_share_quota": node["quota_timeline"][-1][1],
            "cpu_share_measured": _round(node["measured_share"], 4),
            "cpu_throttled_periods": f"{stat.get('nr_throttled', 0)}/{stat.get('nr_periods', 0)}",
            "uplink_rate_tc_bit_s": node.get("uplink_rate_read_back_bit_s"),
            "tc_sent_bytes": node["tc"].get("classes", {}).get("1:1", {}).get("bytes"),
            "tc_drops": node["tc"].get("classes", {}).get("1:1", {}).get("drops"),
            "probe_goodput_bit_s": _round(probes[m]["goodput_bit_s"], 0) if m in probes else None,
            "peak_1s_send_bit_s": _round(node["sent_bit_s_peak_1s"], 0),
            "wire_bytes_sent": node["sent_bytes"], "samples_per_iteration": samples[m],
        })
    return machines


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def initial_loss(settings: dict[str, Any]) -> float:
    """The eval loss of the model every method starts from (the same data, evaluation set and seed)."""
    import torch

    from qtd.config import load_config
    from qtd.engine.points import evaluate_sum
    from qtd.engine.problem import build_problem

    regime = next(iter(settings["regimes"].values()))
    config = load_config(REPO / "configs" / "quickstart.yaml", base_overrides(settings, regime) + METHODS["ddp"])
    problem = build_problem(config)
    loss, _, count = evaluate_sum(problem.template, problem.eval_set, problem.eval_indices, torch.device("cpu"))
    return loss / count


def analyse(finals: dict[str, dict], start_loss: float) -> dict[str, Any]:
    """The rule's target (the highest final loss of all methods), times to it and to two easier levels (half
    and three quarters of the way down from the initial loss), speedups."""
    target = max(final_loss(run["curve"]) for run in finals.values())
    levels = [round(start_loss - f * (start_loss - target), 5) for f in (0.5, 0.75, 1.0)]
    table = {f"{level:g}": {m: time_to_level(run["curve"], level) for m, run in finals.items()} for level in levels}
    time_to_target = table[f"{levels[-1]:g}"]

    def speedup(other: str) -> float | None:
        mine, theirs = time_to_target.get("quantimed"), time_to_target.get(other)
        return round(theirs / mine, 3) if mine and theirs else None

    return {
        "target_loss": levels[-1], "time_to_target_s": time_to_target,
        **{f"speedup_vs_{m}": speedup(m) for m in finals if m != "quantimed"},
        "levels": table,
        "final_eval_loss": {m: round(final_loss(run["curve"]), 5) for m, run in finals.items()},
        "final_eval_accuracy": {m: run["curve"][-1]["eval_accuracy"] for m, run in finals.items()},
        "training_s": {m: round(run["curve"][-1]["time_s"], 2) for m, run in finals.items()},
        "warmup_s": {m: round(run["warmup_s"], 3) for m, run in finals.items()},
        "iterations": {m: run["summary"]["iterations"] for m, run in finals.items()},
        "bytes_sent": {m: run["summary"]["bytes_sent"] for m, run in finals.items()},
        "wire_bytes": {m: sum(node["sent_bytes"] for node in run["cluster"]["nodes"]) for m, run in finals.items()},
    }


def plot(results: dict[str, dict[str, dict]], analyses: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.5), squeeze=False)
    for ax, (regime, finals) in zip(axes[0], results.items()):
        for method, run in finals.items():
            ax.plot([p["time_s"] for p in run["curve"]], [p["eval_loss"] for p in run["curve"]], label=method,
                    lw=2.2 if method == "quantimed" else 1.2, ls="--" if method.startswith("ddp") else "-")
        levels = [float(level) for level in analyses[regime]["levels"]]
        for i, level in enumerate(levels):
            ax.axhline(level, color="grey", lw=0.8, ls="--" if i == len(levels) - 1 else ":")
        r = REGIMES[regime]
        ax.set_title(f"{regime}: CPU {','.join(f'{s:g}' for s in r['cpu_share'])} cores, "
                     f"{r['uplink_mbit']:g} Mbit/s uplinks", fontsize=10)
        ax.set_xlabel("training wall-clock time (s)")
        ax.set_ylabel("eval loss")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle(f"{NODES} machines on one box: network namespaces, tc-shaped uplinks, CPU cgroups")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="QuanTimed, DSGD and DDP, short runs, no tuning; results to runs/bench_quick/")
    parser.add_argument("--out", default=None, help=OUT_HELP)
    parser.add_argument("--budget", type=float, default=None, help="training seconds per final run")
    parser.add_argument("--tune-budget", type=float, default=None, help="training seconds per tuning run")
    parser.add_argument("--regimes", default=",".join(REGIMES))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--data-root", default=None, help="MNIST IDX directory (default: as the README's 'Data and models' section says)")
    args = parser.parse_args()
    out = results_dir(args.out, args.quick, NAME)

    from qtd.cluster import unavailable_reason

    reason = unavailable_reason()
    if reason:
        sys.exit(f"{NAME}: {reason}")
    regimes = [r for r in args.regimes.split(",") if r]
    for name in regimes:
        if name not in REGIMES:
            sys.exit(f"{NAME}: unknown regime {name!r}; choose from {', '.join(REGIMES)}")
    wanted = [m for m in args.methods.split(",") if m]
    for method in wanted:
        if method not in METHODS:
            sys.exit(f"{NAME}: unknown method {method!r}; choose from {', '.join(METHODS)}")
    if "quantimed" not in wanted:
        sys.exit(f"{NAME}: the speedups are QuanTimed-DSGD's: keep quantimed in --methods")

    from qtd.config import load_config
    from qtd.models import build_model

    model = build_model(load_config(REPO / "configs" / "quickstart.yaml", ["model.name=cnn"]).model, (1, 28, 28), 10)
    params = sum(p.numel() for p in model.parameters())
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    batch_s = calibrate_batch_s()
    settings: dict[str, Any] = {
        "nodes": NODES, "topology": TOPOLOGY, "seed": 0, "data": "mnist_idx",
        "data_root": str(find_mnist(args.data_root, NAME)), "test_fraction": 0.2, "eval_samples": 500,
        "model": "cnn", "params": params, "batch_size": BATCH, "micro_batch_size": 5,
        "effective_steps": list(EFFECTIVE_STEPS), "quick": args.quick,
        "budget_s": args.budget if args.budget is not None else (8.0 if args.quick else 60.0),
        "tune_budget_s": args.tune_budget if args.tune_budget is not None else (0.0 if args.quick else 20.0),
        "eval_points": 6 if args.quick else 12, "tune_eval_points": 6,
        "batch_full_core_s": round(batch_s, 5),
        "regimes": {name: regime_settings(name, batch_s, params) for name in regimes},
        "emulation": "off (emulation.stragglers=false, emulation.links=false)",
        "harness": "qtd cluster run (network namespaces, htb uplinks, cgroup v1 cpu quotas, c10d rendezvous)",
        "load_average_at_start": load_at_start, "platform": platform.platform(), "python": platform.python_version(),
    }
    settings["initial_eval_loss"] = round(initial_loss(settings), 5)
    print(f"settings: {json.dumps(settings)}", flush=True)
    work = Path(tempfile.mkdtemp(prefix=f"qtd_{NAME}_runs_"))

    results: dict[str, dict[str, dict]] = {}
    tuning: dict[str, dict[str, list]] = {}
    chosen: dict[str, dict[str, list[str]]] = {}
    for regime in regimes:
        methods = [m for m in wanted if not args.quick or m in QUICK_METHODS[regime]]
        tuning[regime], chosen[regime], pace, results[regime] = {}, {}, {}, {}
        for method in methods:
            options = grid(method)
            best_index = len(options) // 2
            if settings["tune_budget_s"] > 0:
                trials = []
                for i, extra in enumerate(options):
                    try:
                        trials.append((i, run_method(method, extra, settings["tune_budget_s"], regime, settings,
                                                     work / f"{regime}_tune_{method}_{i}", None, final=False,
                                                     probe=False)))
                        tuning[regime].setdefault(method, []).append(
                            {"overrides": extra, "final_loss": final_loss(trials[-1][1]["curve"])})
                    except Diverged as exc:
                        tuning[regime].setdefault(method, []).append({"overrides": extra, "diverged": str(exc)})
                if not trials:
                    raise SystemExit(f"{NAME}: every step size of {method} diverged in {regime}")
                best_index, best = min(trials, key=lambda t: final_loss(t[1]["curve"]))
                if best["summary"]["iterations"] and method != "async_dsgd":
                    pace[method] = best["curve"][-1]["time_s"] / best["summary"]["iterations"]
            # The rule for a final run whose model turns non-finite, the same for every method: run the next
            # smaller step size of the grid instead (the result file records it).
            for i in range(best_index, -1, -1):
                try:
                    results[regime][method] = run_method(method, options[i], settings["budget_s"], regime, settings,
                                                         work / f"{regime}_final_{method}_{i}", pace.get(method),
                                                         final=True, probe=not args.quick)
                    chosen[regime][method] = options[i]
                    break
                except Diverged as exc:
                    DIVERGED_FINALS.append(str(exc))
            else:
                raise SystemExit(f"{NAME}: {method} diverged in {regime} at every step size up to its tuned one")

    analyses = {regime: analyse(finals, settings["initial_eval_loss"]) for regime, finals in results.items()}
    headline = analyses.get("paper") or next(iter(analyses.values()))
    fair = analyses.get("fair_weather", {})
    summary = {
        **headline, "chosen_step_sizes": chosen,
        "speedup_vs_ddp_fair_weather": fair.get("speedup_vs_ddp"),
        "fair_weather": fair,
    }
    settings["measured"] = {regime: {m: measured_machines(run) for m, run in finals.items()}
                            for regime, finals in results.items()}
    settings["load_average_per_final_run"] = {regime: {m: run["cluster"]["load_average"] for m, run in finals.items()}
                                              for regime, finals in results.items()}  # at each run's end
    settings["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]  # other jobs share the machine
    settings["diverged_final_runs"] = DIVERGED_FINALS
    settings["failed_runs_retried"] = FAILURES
    result = {"name": NAME, "summary": summary, "settings": settings, "tuning": tuning,
              "runs": {regime: {m: {"overrides": run["overrides"], "curve": run["curve"]} for m, run in finals.items()}
                       for regime, finals in results.items()}}
    (out / f"{NAME}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(results, analyses, out / f"{NAME}.png")
    print(json.dumps(summary, indent=2))
    print(f"results in {out}; run directories kept in {work}")


if __name__ == "__main__":
    main()
