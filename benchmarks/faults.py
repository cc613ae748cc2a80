"""Fault injection with real processes: every trial ends with the full run or one clear error, never a
hang, never lost or spliced results.

    python benchmarks/faults.py              # the committed result: 20 trials per run kind (54 minutes on 2 cores)
    python benchmarks/faults.py --trials 4   # 4 per kind (9 minutes)
    python benchmarks/faults.py --quick      # 2 trials per run kind (a few minutes)
    python benchmarks/faults.py --out DIR    # where faults.json and faults.png go

Four run kinds, each a 4-node `qtd launch` on scikit-learn's digits: synchronous gossip (QuanTimed-DSGD
with a deadline), all-reduce SGD, asynchronous DSGD (a time budget) and parameter-server mode (TopK-EF
AMSGrad). Each trial draws one fault at random (seeded):

- ``kill``: SIGKILL a random node at a random moment of training (``--max-restarts 1``);
- ``stop``: SIGSTOP a random node (it never resumes; its neighbours time out after comm.timeout_s);
- ``corrupt``: run to the end, flip one bit of a random node's newest checkpoint (or cut it short),
  then ask for a longer run in the same directory;
- ``foreign``: run to the end, then start a run with other settings in the same directory.

Outcomes: ``completed`` (exit 0 and a consistent run directory: metrics.jsonl strictly increasing and
ending at the final iteration, each node's log holding each iteration once, summary.json labelled with
the config that ran, or the run reported complete without rewriting anything), ``clear_error`` (non-zero
exit whose last line is one ``qtd: error:`` line and no traceback anywhere), ``hang`` (the trial's time
limit passed; every process is then killed) and ``lost_or_spliced`` (a run that reported success with an
inconsistent directory, or an error that left the previous run's files altered).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NAME = "faults"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import OUT_HELP, results_dir  # noqa: E402

NODES = 4
COMMON = ["run.progress=false", f"topology.nodes={NODES}", "topology.kind=ring", "comm.timeout_s=5",
          "run.eval_every=20", "run.checkpoint_every=20"]
KINDS: dict[str, tuple[str, list[str], int]] = {  # config, overrides, iterations
    # constant steps: with schedule=paper the step sizes depend on run.iterations, so the longer run of a
    # corrupt trial would be refused as other settings and never reach the checkpoint fallback
    "gossip": ("configs/quickstart.yaml", ["algorithm.name=quantimed", "algorithm.deadline_s=0.02",
                                           "algorithm.schedule=constant", "algorithm.alpha=0.5",
                                           "algorithm.eps=0.5"], 100),
    "allreduce": ("configs/quickstart.yaml", ["algorithm.name=allreduce_sgd", "compression.bits=32",
                                              "algorithm.schedule=constant", "algorithm.alpha=0.3"], 100),
    "async": ("configs/async_dsgd.yaml", ["emulation.speeds=[800, 400, 200, 100]", "run.time_budget_s=8",
                                          "run.eval_every_s=2", "comm.timeout_s=10"], 100000),
    "ps": ("configs/ps_digits.yaml", [], 100),
}
FAULTS = ("kill", "stop", "corrupt", "foreign")
FOREIGN = {"gossip": "compression.bits=2", "allreduce": "algorithm.alpha=0.1", "async": "algorithm.alpha=0.1",
           "ps": "ps.k_ratio=0.05"}


def _launch_args(kind: str, out: Path, iterations: int | None = None, extra: tuple[str, ...] = (),
                 restarts: int = 0) -> list[str]:
    config, overrides, default_iterations = KINDS[kind]
    sets = COMMON + overrides + [f"run.out_dir={out}", f"run.iterations={iterations or default_iterations}", *extra]
    args = [sys.executable, "-m", "qtd.cli.main", "launch", config, "--max-restarts", str(restarts)]
    for override in sets:
        args += ["--set", override]
    return args


def _node_pids(root: int) -> dict[int, int]:
    """rank -> pid of the live qtd.train processes below ``root``."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found = {}
    for pid in parents:
        ancestor = parents.get(pid)
        while ancestor not in (None, 0, 1, root):
            ancestor = parents.get(ancestor)
        if ancestor != root:
            continue
        try:
            if b"qtd.train" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            environ = dict(item.split(b"=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                           if b"=" in item)
        except (OSError, IndexError):
            continue
        if state != "Z" and b"RANK" in environ:
            found[int(environ[b"RANK"])] = pid
    return found


def _kill_tree(process: subprocess.Popen) -> None:
    for pid in _node_pids(process.pid).values():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if process.poll() is None:
        process.kill()


def _run(args: list[str], limit_s: float, fault: str | None = None, rng: random.Random | None = None,
         out: Path | None = None) -> dict[str, Any]:
    """Run a launcher to its end (or ``limit_s``); with a ``kill``/``stop`` fault, hit a random node once it
    has trained a random number of iterations."""
    started = time.monotonic()
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    hit: dict[str, Any] = {}
    try:
        if fault in ("kill", "stop"):
            victim, after = rng.randrange(NODES), rng.randint(3, 40)
            log = out / "nodes" / f"node_{victim:03d}.jsonl"
            while process.poll() is None and time.monotonic() - started < limit_s:
                if log.exists() and len(log.read_text().splitlines()) >= after:
                    pids = _node_pids(process.pid)
                    if victim in pids:
                        os.kill(pids[victim], signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
                        hit = {"node": victim, "after_iterations": after, "at_s": round(time.monotonic() - started, 2)}
                    break
                time.sleep(0.02)
        _, stderr = process.communicate(timeout=max(limit_s - (time.monotonic() - started), 1.0))
        hung = False
    except subprocess.TimeoutExpired:
        _kill_tree(process)
        _, stderr = process.communicate()
        hung = True
    finally:
        if process.poll() is None:
            _kill_tree(process)
        for pid in _node_pids(process.pid).values():  # a stopped node torchrun could not take down
            os.kill(pid, signal.SIGKILL)
    return {"rc": process.returncode, "stderr": stderr, "hung": hung, "hit": hit,
            "seconds": round(time.monotonic() - started, 2)}


def _iterations(path: Path) -> list[int]:
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line)["iteration"])
        except (ValueError, KeyError, TypeError):
            return [-1]  # a damaged row in a finished run: inconsistent
    return rows


def _consistent(kind: str, out: Path, iterations: int, expect: dict[str, Any]) -> str:
    """'' when the run directory is what a complete run with these settings writes, else what is wrong."""
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return "no readable summary.json"
    for key, value in expect.items():
        if summary.get(key) != value:
            return f"summary.json says {key}={summary.get(key)!r}, the config ran {value!r}"
    rows = _iterations(out / "metrics.jsonl")
    if not rows or rows != sorted(set(rows)):
        return f"metrics.jsonl iterations are not strictly increasing: {rows[:12]}"
    if kind == "async":
        return "" if summary.get("nodes") == NODES else "summary.json has the wrong node count"
    if rows[-1] != iterations or summary.get("iterations") != iterations:
        return f"the run ended at {rows[-1]}, not {iterations}"
    for node in range(NODES):
        logged = _iterations(out / "nodes" / f"node_{node:03d}.jsonl")
        if logged != list(range(1, iterations + 1)):
            return f"node {node}'s log does not hold each of 1..{iterations} once"
    return ""


def _clear_error(result: dict[str, Any]) -> bool:
    lines = result["stderr"].strip().splitlines()
    return (result["rc"] != 0 and bool(lines) and lines[-1].startswith("qtd: error:")
            and "Traceback" not in result["stderr"])


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _damage(out: Path, rng: random.Random) -> dict[str, Any]:
    """Flip one bit in the middle of a random node's newest checkpoint file, or cut it in half."""
    newest = sorted((out / "checkpoints").glob("iter_*"))[-1]
    victim = rng.randrange(NODES)
    path = newest / f"node_{victim:03d}.pt"
    raw = bytearray(path.read_bytes())
    if rng.random() < 0.5:
        position = rng.randrange(len(raw) // 4, len(raw) - 64)
        raw[position] ^= 1 << rng.randrange(8)
        how = f"bit flip at byte {position}"
    else:
        raw = raw[: len(raw) // 2]
        how = "truncated to half"
    path.write_bytes(bytes(raw))
    return {"file": str(path.relative_to(out)), "how": how}


def trial(kind: str, fault: str, seed: int, work: Path, limit_s: float) -> dict[str, Any]:
    rng = random.Random(seed)
    out = work / f"{kind}_{fault}_{seed}"
    iterations = KINDS[kind][2]
    labels = {"algorithm": None}
    record: dict[str, Any] = {"kind": kind, "fault": fault, "seed": seed}
    if fault in ("kill", "stop"):
        result = _run(_launch_args(kind, out, restarts=1), limit_s, fault, rng, out)
        record.update(hit=result["hit"], seconds=result["seconds"])
        if result["hung"]:
            return {**record, "outcome": "hang"}
        if not result["hit"] and result["rc"] != 0:  # it failed before the fault: the trial tested nothing
            return {**record, "outcome": "setup_failed", "last_line": result["stderr"].strip().splitlines()[-1:]}
        if result["rc"] == 0:
            problem = _consistent(kind, out, iterations, {})
            return {**record, "outcome": "lost_or_spliced" if problem else "completed", "problem": problem}
        return {**record, "outcome": "clear_error" if _clear_error(result) else "unclear_error",
                "last_line": result["stderr"].strip().splitlines()[-1:]}
    short = iterations if kind == "async" else iterations // 2
    first = _run(_launch_args(kind, out, iterations=short), limit_s)
    if first["rc"] != 0 or first["hung"]:
        return {**record, "outcome": "setup_failed", "last_line": first["stderr"].strip().splitlines()[-1:]}
    expected_first = json.loads((out / "summary.json").read_text())
    labels = {"algorithm": expected_first["algorithm"]}
    if fault == "corrupt":
        record["damage"] = _damage(out, rng)
        again = _run(_launch_args(kind, out), limit_s)
        record["seconds"] = again["seconds"]
        if again["hung"]:
            return {**record, "outcome": "hang"}
        if again["rc"] == 0:
            if "already holds this run, complete" in again["stderr"]:  # async: its one checkpoint is final
                return {**record, "outcome": "completed", "note": "reported complete"}
            problem = _consistent(kind, out, iterations, labels)
            return {**record, "outcome": "lost_or_spliced" if problem else "completed", "problem": problem,
                    "fell_back": "damaged on node" in again["stderr"]}
        return {**record, "outcome": "clear_error" if _clear_error(again) else "unclear_error",
                "last_line": again["stderr"].strip().splitlines()[-1:]}
    before = _snapshot(out)
    other = _run(_launch_args(kind, out, iterations=short, extra=(FOREIGN[kind],)), limit_s)
    record["seconds"] = other["seconds"]
    if other["hung"]:
        return {**record, "outcome": "hang"}
    if _snapshot(out) != before:
        return {**record, "outcome": "lost_or_spliced", "problem": "the other run changed the first run's files"}
    if other["rc"] == 0:
        return {**record, "outcome": "lost_or_spliced", "problem": "a run with other settings was accepted"}
    return {**record, "outcome": "clear_error" if _clear_error(other) else "unclear_error",
            "last_line": other["stderr"].strip().splitlines()[-1:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 trials per run kind")
    parser.add_argument("--trials", type=int, default=None, help="trials per run kind (default 20; 2 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-s", type=float, default=300.0, help="a trial longer than this is a hang")
    parser.add_argument("--out", default=None, help=OUT_HELP)
    args = parser.parse_args(argv)
    trials = args.trials if args.trials is not None else (2 if args.quick else 20)
    if trials < 1 or not 10 <= args.limit_s <= 3600:
        parser.error("--trials must be >= 1 and --limit-s in 10..3600")
    out_dir = results_dir(args.out, args.quick, NAME)
    rng = random.Random(args.seed)
    plan = [(kind, rng.choice(FAULTS) if not args.quick else FAULTS[(i + k) % len(FAULTS)], rng.randrange(10**6))
            for k, kind in enumerate(KINDS) for i in range(trials)]
    records = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="qtd_faults_") as work:
        for number, (kind, fault, seed) in enumerate(plan, 1):
            record = trial(kind, fault, seed, Path(work), args.limit_s)
            records.append(record)
            print(f"{NAME}: {number}/{len(plan)} {kind:9s} {fault:8s} -> {record['outcome']}"
                  f"{' (' + record['problem'] + ')' if record.get('problem') else ''}", flush=True)
            shutil.rmtree(Path(work) / f"{kind}_{fault}_{seed}", ignore_errors=True)
    outcomes = Counter(r["outcome"] for r in records)
    by_kind = {kind: dict(Counter(r["outcome"] for r in records if r["kind"] == kind)) for kind in KINDS}
    by_fault = {fault: dict(Counter(r["outcome"] for r in records if r["fault"] == fault)) for fault in FAULTS}
    result = {
        "summary": {"trials": len(records), "completed_or_clear_error": outcomes["completed"] + outcomes["clear_error"],
                    "completed": outcomes["completed"], "clear_error": outcomes["clear_error"],
                    "hangs": outcomes["hang"], "lost_or_spliced": outcomes["lost_or_spliced"],
                    "unclear_error": outcomes["unclear_error"], "setup_failed": outcomes["setup_failed"]},
        "settings": {"nodes": NODES, "trials_per_kind": trials, "seed": args.seed, "limit_s": args.limit_s,
                     "kinds": {k: {"config": c, "overrides": COMMON + o, "iterations": n} for k, (c, o, n) in KINDS.items()},
                     "faults": list(FAULTS), "foreign_override": FOREIGN, "quick": args.quick,
                     "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                 "load_at_end": os.getloadavg()[0]},
                     "wall_s": round(time.monotonic() - started, 1)},
        "by_kind": by_kind, "by_fault": by_fault, "trials": records,
    }
    (out_dir / f"{NAME}.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(result, out_dir / f"{NAME}.png")
    s = result["summary"]
    print(f"{NAME}: {s['trials']} trials: {s['completed']} completed, {s['clear_error']} clear errors, "
          f"{s['hangs']} hangs, {s['lost_or_spliced']} lost or spliced, {s['unclear_error']} unclear errors",
          flush=True)
    return 0 if s["completed_or_clear_error"] == s["trials"] else 1


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds, outcomes = list(result["by_kind"]), ["completed", "clear_error", "unclear_error", "hang",
                                                  "lost_or_spliced", "setup_failed"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bottom = [0] * len(kinds)
    for outcome in outcomes:
        counts = [result["by_kind"][k].get(outcome, 0) for k in kinds]
        if any(counts):
            ax.bar(kinds, counts, bottom=bottom, label=outcome)
            bottom = [b + c for b, c in zip(bottom, counts)]
    s = result["summary"]
    ax.set_ylabel("trials")
    ax.set_title(f"fault injection: {s['trials']} trials, {s['hangs']} hangs, {s['lost_or_spliced']} lost or spliced")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
