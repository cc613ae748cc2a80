"""Elastic gossip with real processes: a node killed (or stopped) mid-run is dropped, and the survivors
finish the full run without a restart (``comm.on_peer_loss: continue``).

    python benchmarks/elastic.py            # the committed result: 10 SIGKILL + 2 SIGSTOP trials (about 20 minutes on 2 cores)
    python benchmarks/elastic.py --quick    # 2 + 1 trials, 150 iterations (a few minutes)
    python benchmarks/elastic.py --out DIR  # where elastic.json and elastic.png go

Every trial is one `qtd launch` of configs/quickstart.yaml with 8 nodes on a ring (QuanTimed-DSGD, 4-bit
messages, scikit-learn's digits) and ``comm.timeout_s=5``. A random node (seeded) is sent SIGKILL (or
SIGSTOP) once its log reaches a random iteration. A trial ``survived`` when the launcher exits 0, the
summary's final membership is the 7 others, every survivor's log runs to ``run.iterations`` and
metrics.jsonl ends there. ``seconds_lost`` is what the survivors' agreement on the new membership cost,
from the failed iteration's start to the new group (qtd records it per change, in summary.json), and counts
as training time. The reference is an uninterrupted 7-node run of the same config:
``accuracy_gap_vs_uninterrupted`` is its final accuracy minus the trials' mean, in points.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NAME = "elastic"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import OUT_HELP, results_dir  # noqa: E402
from faults import _kill_tree, _node_pids  # noqa: E402

NODES = 8
COMMON = ["run.progress=false", "topology.kind=ring", "comm.timeout_s=5", "comm.on_peer_loss=continue",
          "run.eval_every=25", "run.checkpoint_every=0"]


def _launch(out: Path, nodes: int, iterations: int) -> list[str]:
    args = [sys.executable, "-m", "qtd.cli.main", "launch", "configs/quickstart.yaml"]
    for override in (*COMMON, f"topology.nodes={nodes}", f"run.iterations={iterations}", f"run.out_dir={out}"):
        args += ["--set", override]
    return args


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def run(out: Path, nodes: int, iterations: int, limit_s: float, victim: int | None = None, at: int = 0,
        how: signal.Signals = signal.SIGKILL) -> dict[str, Any]:
    """One launch; with ``victim``, ``how`` is sent to that node once its log reaches iteration ``at``."""
    started = time.monotonic()
    launcher = subprocess.Popen(_launch(out, nodes, iterations), cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    hit = None
    try:
        if victim is not None:
            log = out / "nodes" / f"node_{victim:03d}.jsonl"
            while launcher.poll() is None and time.monotonic() - started < limit_s:
                rows = _rows(log) if log.exists() else []
                if rows and rows[-1].get("iteration", 0) >= at:
                    pid = _node_pids(launcher.pid).get(victim)
                    if pid is not None:
                        os.kill(pid, how)
                        hit = rows[-1]["iteration"]
                    break
                time.sleep(0.05)
        _, stderr = launcher.communicate(timeout=max(limit_s - (time.monotonic() - started), 1.0))
    except subprocess.TimeoutExpired:
        _kill_tree(launcher)
        return {"rc": None, "hung": True, "hit": hit, "seconds": time.monotonic() - started}
    finally:
        _kill_tree(launcher)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    return {"rc": launcher.returncode, "hung": False, "hit": hit, "seconds": time.monotonic() - started,
            "summary": summary, "metrics": _rows(out / "metrics.jsonl"),
            "last_line": stderr.strip().splitlines()[-1:] if stderr.strip() else []}


def _survived(result: dict[str, Any], out: Path, victim: int, iterations: int) -> bool:
    summary = result.get("summary") or {}
    final = summary.get("membership", {}).get("final")
    if result["rc"] != 0 or final != [r for r in range(NODES) if r != victim]:
        return False
    if not result["metrics"] or result["metrics"][-1]["iteration"] != iterations:
        return False
    return all(_rows(out / "nodes" / f"node_{node:03d}.jsonl")[-1]["iteration"] == iterations for node in final)


def trial(work: Path, seed: int, how: signal.Signals, iterations: int, limit_s: float) -> dict[str, Any]:
    rng = random.Random(seed)
    victim, at = rng.randrange(NODES), rng.randrange(iterations // 6, iterations * 5 // 6)
    out = work / f"{how.name.lower()}_{seed}"
    result = run(out, NODES, iterations, limit_s, victim, at, how)
    changes = (result.get("summary") or {}).get("membership", {}).get("changes", [])
    record = {"signal": how.name, "seed": seed, "victim": victim, "at": at, "hit": result["hit"],
              "survived": _survived(result, out, victim, iterations) if not result["hung"] else False,
              "hung": result["hung"], "wall_s": round(result["seconds"], 1),
              "seconds_lost": changes[0]["seconds_lost"] if changes else None,
              "cause": changes[0]["cause"] if changes else None, "changes": len(changes),
              "eval_accuracy": (result.get("summary") or {}).get("eval_accuracy"),
              "eval_loss": (result.get("summary") or {}).get("eval_loss"),
              "curve": [{k: row.get(k) for k in ("iteration", "time_s", "eval_loss", "nodes")}
                        for row in result.get("metrics", [])]}
    if not record["survived"]:
        record["last_line"] = result.get("last_line")
    print(f"  {how.name} node {victim} at iteration {at}: survived={record['survived']} "
          f"lost={record['seconds_lost']} s accuracy={record['eval_accuracy']}", flush=True)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 SIGKILL + 1 SIGSTOP trials of 150 iterations")
    parser.add_argument("--trials", type=int, default=None, help="SIGKILL trials (default 10; 2 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-s", type=float, default=400.0, help="a trial longer than this is a hang")
    parser.add_argument("--out", default=None, help=OUT_HELP)
    args = parser.parse_args(argv)
    out_dir = results_dir(args.out, args.quick, NAME)
    kills = args.trials if args.trials is not None else (2 if args.quick else 10)
    stops = 1 if args.quick else 2
    iterations = 150 if args.quick else 300
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="qtd-elastic-") as tmp:
        work = Path(tmp)
        print(f"uninterrupted {NODES - 1}-node run", flush=True)
        reference = run(work / "uninterrupted", NODES - 1, iterations, args.limit_s)
        if reference["rc"] != 0:
            sys.exit(f"elastic: the uninterrupted run failed: {reference.get('last_line')}")
        print(f"{kills} SIGKILL and {stops} SIGSTOP trials on {NODES} nodes", flush=True)
        trials = [trial(work, args.seed + k, signal.SIGKILL, iterations, args.limit_s) for k in range(kills)]
        trials += [trial(work, args.seed + 1000 + k, signal.SIGSTOP, iterations, args.limit_s) for k in range(stops)]
    killed = [t for t in trials if t["signal"] == "SIGKILL"]
    stopped = [t for t in trials if t["signal"] == "SIGSTOP"]
    ref_accuracy = reference["summary"]["eval_accuracy"]

    def mean(values: list[float]) -> float | None:
        values = [v for v in values if v is not None]
        return round(sum(values) / len(values), 3) if values else None

    gaps = [100 * (ref_accuracy - t["eval_accuracy"]) for t in killed if t["eval_accuracy"] is not None]
    summary = {"trials": len(killed), "survived": sum(t["survived"] for t in killed),
               "hangs": sum(t["hung"] for t in trials),
               "mean_seconds_lost_per_failure": mean([t["seconds_lost"] for t in killed]),
               "max_seconds_lost_per_failure": max((t["seconds_lost"] or 0 for t in killed), default=None),
               "accuracy_gap_vs_uninterrupted": mean(gaps),
               "max_accuracy_gap_vs_uninterrupted": round(max(gaps), 3) if gaps else None,
               "uninterrupted_accuracy": ref_accuracy,
               "mean_trial_accuracy": mean([t["eval_accuracy"] for t in killed]),
               "stop_trials": len(stopped), "stop_survived": sum(t["survived"] for t in stopped),
               "mean_seconds_lost_per_stop": mean([t["seconds_lost"] for t in stopped]),
               "comm_timeout_s": 5.0}
    result = {"benchmark": NAME, "quick": args.quick, "summary": summary,
              "settings": {"config": "configs/quickstart.yaml", "nodes": NODES, "iterations": iterations,
                           "overrides": COMMON, "seed": args.seed, "reference_nodes": NODES - 1},
              "reference": {"eval_accuracy": ref_accuracy, "eval_loss": reference["summary"]["eval_loss"],
                            "curve": [{k: row.get(k) for k in ("iteration", "time_s", "eval_loss", "nodes")}
                                      for row in reference["metrics"]]},
              "trials": trials, "seconds": round(time.time() - started, 1),
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count()}}
    (out_dir / f"{NAME}.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(result, out_dir / f"{NAME}.png")
    print(json.dumps(summary, indent=2), flush=True)
    return 0


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, nodes_ax) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True, height_ratios=(3, 1.3))
    ref = result["reference"]["curve"]
    loss_ax.plot([r["iteration"] for r in ref], [r["eval_loss"] for r in ref], "k-", lw=2,
                 label=f"uninterrupted, {result['settings']['reference_nodes']} nodes")
    for k, t in enumerate(result["trials"]):
        curve = t["curve"]
        style = "-" if t["signal"] == "SIGKILL" else "--"
        label = "8 nodes, one killed (each trial)" if k == 0 else (
            "8 nodes, one stopped" if t["signal"] == "SIGSTOP" and style == "--" and k == result["summary"]["trials"]
            else None)
        loss_ax.plot([r["iteration"] for r in curve], [r["eval_loss"] for r in curve], style, lw=0.9, alpha=0.7,
                     label=label)
        nodes_ax.step([r["iteration"] for r in curve], [r["nodes"] for r in curve], where="post", lw=0.9, alpha=0.7)
    loss_ax.set_yscale("log")
    loss_ax.set_ylabel("eval loss (network average)")
    loss_ax.legend(fontsize=8)
    s = result["summary"]
    loss_ax.set_title(f"elastic gossip: {s['survived']}/{s['trials']} killed-node trials finished, "
                      f"{s['mean_seconds_lost_per_failure']} s lost per failure", fontsize=10)
    nodes_ax.set_ylabel("nodes in the run")
    nodes_ax.set_xlabel("iteration")
    nodes_ax.set_yticks([NODES - 1, NODES])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
