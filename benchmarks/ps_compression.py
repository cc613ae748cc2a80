"""Parameter-server mode on MNIST: dense AMSGrad against TopK 1% (with and without error feedback) and
Block-Sign with error feedback, 8 workers as real processes (`qtd launch`, gloo).

    python benchmarks/ps_compression.py            # the committed result (7 epochs per method)
    python benchmarks/ps_compression.py --quick    # 12 steps per method, no fp16 variant (to runs/bench_quick/)
    python benchmarks/ps_compression.py --out DIR  # where ps_compression.json and .png go

Data: the 10,000 images of MNIST's t10k split (--data-root, QTD_MNIST_DIR or data/mnist), 8,000 for
training split over the workers at random, 2,000 held out for the test accuracy. Model: the COMP-AMS
MNIST CNN (1.2M parameters). Every method runs configs/ps_mnist.yaml with the same seed, learning rate and
number of steps; only ps.compressor / ps.error_feedback / ps.value_bits change.

Bytes, per worker, whole run: ``upload_bytes`` is what a worker contributes (its compressed message with
its 32-byte header; dense: the raw float32 gradient), the figure of a classic parameter server and of the
COMP-AMS paper; ``wire_bytes`` is what the collective really moves out of each worker: a ring all-gather
forwards n - 1 messages, so it grows with n, while a ring all-reduce of the dense gradient moves
2 (n - 1) / n of it. ``crossover_workers`` is the smallest worker count at which dense all-reduce would move
fewer bytes per worker than the TopK-EF all-gather.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from _common import OUT_HELP, find_mnist, results_dir  # noqa: E402
from qtd.comm import ring_allgather_bytes, ring_allreduce_bytes  # noqa: E402
from qtd.config import load_config  # noqa: E402
from qtd.metrics import read_jsonl  # noqa: E402

NAME = "ps_compression"
CONFIG = REPO / "configs" / "ps_mnist.yaml"
WORKERS = 8
BATCH = 32
TRAIN_IMAGES = 8000
METHODS = {  # label -> overrides
    "dense": ["ps.compressor=none"],
    "topk_ef": ["ps.compressor=topk", "ps.k_ratio=0.01", "ps.error_feedback=true", "ps.value_bits=32"],
    "topk_ef_fp16": ["ps.compressor=topk", "ps.k_ratio=0.01", "ps.error_feedback=true", "ps.value_bits=16"],
    "topk": ["ps.compressor=topk", "ps.k_ratio=0.01", "ps.error_feedback=false", "ps.value_bits=32"],
    "blocksign_ef": ["ps.compressor=blocksign", "ps.error_feedback=true"],
}
LABELS = {"dense": "dense AMSGrad (all-reduce)", "topk_ef": "TopK 1% + EF",
          "topk_ef_fp16": "TopK 1% + EF, fp16 values", "topk": "TopK 1%, no EF", "blocksign_ef": "Block-Sign + EF"}


def initial_params(overrides: list[str]):
    """theta before the first step (every method starts from the same seeded model)."""
    from qtd.engine.problem import build_problem
    from qtd.models import FlatModel

    return FlatModel(build_problem(load_config(CONFIG, overrides)).template).params.detach().clone()


def run_method(label: str, overrides: list[str], common: list[str], run_dir: Path, timeout_s: float,
               theta0) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONWARNINGS"] = "ignore"
    env.setdefault("OMP_NUM_THREADS", "1")
    args = [sys.executable, "-m", "qtd.cli.main", "launch", str(CONFIG)]
    for item in common + overrides + [f"run.out_dir={run_dir}"]:
        args += ["--set", item]
    started = time.monotonic()
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    wall = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"ps_compression: {label} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = read_jsonl(run_dir / "metrics.jsonl")
    workers = summary["nodes"]
    curve = [{"iteration": r["iteration"], "epoch": round(r["epoch"], 4), "test_accuracy": 100 * r["eval_accuracy"],
              "test_loss": r["eval_loss"], "upload_bytes_per_worker": r["upload_bytes"] // workers,
              "wire_bytes_per_worker": r["bytes_sent"] // workers, "train_time_s": r["time_s"]} for r in rows]
    checkpoint = run_dir / "checkpoints" / f"iter_{summary['iterations']:08d}" / "node_000.pt"
    theta = torch.load(checkpoint, weights_only=True)["params"]
    never_updated = float((theta == theta0).double().mean())  # parameters no step ever changed
    print(f"  {label:13s} {curve[-1]['test_accuracy']:6.2f}%  upload/worker/step "
          f"{summary['upload_bytes_per_step']:>9,d} B  never updated {100 * never_updated:5.1f}%  "
          f"wall {wall:5.0f} s", flush=True)
    return {"summary": summary, "curve": curve, "wall_s": wall, "never_updated": never_updated}


def crossover_workers(dense_nbytes: int, message_nbytes: int, limit: int = 100_000) -> int | None:
    """Smallest n >= 2 at which a ring all-reduce of the dense gradient moves fewer bytes per worker than a
    ring all-gather of the compressed messages."""
    for n in range(2, limit):
        if ring_allreduce_bytes(dense_nbytes, n) < ring_allgather_bytes(message_nbytes, n):
            return n
    return None


def curve_gap(better: list[dict], worse: list[dict]) -> dict:
    """Accuracy of ``better`` minus ``worse`` (points) at each common evaluation: mean, min, max."""
    gaps = [b["test_accuracy"] - w["test_accuracy"] for b, w in zip(better, worse)]
    return {"mean": round(sum(gaps) / len(gaps), 2), "min": round(min(gaps), 2), "max": round(max(gaps), 2),
            "evaluations": len(gaps)}


def plot(curves: dict, summary: dict, settings: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for label, curve in curves.items():
        accuracy = [p["test_accuracy"] for p in curve]
        axes[0].plot([p["epoch"] for p in curve], accuracy, marker="o", ms=3, label=LABELS[label])
        axes[1].plot([p["upload_bytes_per_worker"] / 1e6 for p in curve], accuracy, marker="o", ms=3,
                     label=LABELS[label])
    axes[0].set(xlabel="epoch", ylabel="test accuracy (%)", title="accuracy vs epochs")
    axes[1].set(xscale="log", xlabel="upload per worker (MB, log)", ylabel="test accuracy (%)",
                title="accuracy vs bytes uploaded")
    low = min(p["test_accuracy"] for curve in curves.values() for p in curve[1:] or curve)
    for ax in axes[:2]:
        ax.set_ylim(max(low - 1, 0), 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    dense, message = summary["upload_bytes_per_step"]["dense"], summary["upload_bytes_per_step"]["topk_ef"]
    ns = list(range(2, max(4 * (summary["crossover_workers"] or 64), 64)))
    axes[2].plot(ns, [ring_allreduce_bytes(dense, n) / 1e6 for n in ns], label="dense ring all-reduce")
    axes[2].plot(ns, [ring_allgather_bytes(message, n) / 1e6 for n in ns], label="TopK 1% + EF ring all-gather")
    axes[2].plot(ns, [message / 1e6 for _ in ns], ls="--", label="TopK 1% + EF upload (classic PS)")
    if summary["crossover_workers"]:
        axes[2].axvline(summary["crossover_workers"], color="grey", ls=":",
                        label=f"crossover: {summary['crossover_workers']} workers")
    axes[2].set(xscale="log", yscale="log", xlabel="workers n", ylabel="MB per worker per step",
                title="traffic per worker and step vs n")
    axes[2].grid(alpha=0.3, which="both")
    axes[2].legend(fontsize=8)
    fig.suptitle(f"PS mode, {settings['workers']} workers, COMP-AMS CNN ({settings['params']:,} params), "
                 f"MNIST 8k/2k, {settings['epochs']:.1f} epochs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="12 steps per method instead of 5 epochs")
    parser.add_argument("--out", default=None, help=OUT_HELP)
    parser.add_argument("--data-root", default=None, help="directory of the MNIST IDX files")
    parser.add_argument("--epochs", type=float, default=7.0)
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated subset of " + ", ".join(METHODS) + " (dense and topk_ef are needed)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every method, e.g. --set ps.lr=0.0005")
    parser.add_argument("--keep-runs", action="store_true", help="keep the run directories under OUT/ps_runs")
    parser.add_argument("--replot", action="store_true", help="only redraw the PNG from OUT/ps_compression.json")
    args = parser.parse_args()
    out = results_dir(args.out, args.quick, NAME)
    if args.replot:
        payload = json.loads((out / f"{NAME}.json").read_text())
        plot(payload["curves"], payload["summary"], payload["settings"], out / f"{NAME}.png")
        return
    steps_per_epoch = TRAIN_IMAGES / (WORKERS * BATCH)
    iterations = 12 if args.quick else round(args.epochs * steps_per_epoch)
    eval_every = 4 if args.quick else max(1, round(steps_per_epoch / 2))
    common = [f"topology.nodes={WORKERS}", f"ps.batch_size={BATCH}", f"run.iterations={iterations}",
              f"run.eval_every={eval_every}", f"data.root={find_mnist(args.data_root, NAME)}", "run.progress=false",
              "run.resume=never", "run.seed=0", "comm.timeout_s=300"]
    chosen = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(METHODS))
    if unknown or not {"dense", "topk_ef"} <= set(chosen):
        sys.exit(f"ps_compression: --methods must name dense, topk_ef and any of {', '.join(METHODS)}; "
                 f"got {args.methods!r}")
    theta0 = initial_params(common + args.overrides)
    runs_root = out / "ps_runs" if args.keep_runs else Path(tempfile.mkdtemp(prefix="qtd_ps_"))
    print(f"ps_compression: {WORKERS} workers x {iterations} steps per method ({iterations / steps_per_epoch:.2f} "
          f"epochs), {os.cpu_count()} CPU cores", flush=True)
    started = time.monotonic()
    results = {}
    try:
        for label, overrides in METHODS.items():
            if label not in chosen or (args.quick and label == "topk_ef_fp16"):
                continue  # the quick version skips the float16 variant (one process start-up less)
            results[label] = run_method(label, overrides, common + args.overrides, runs_root / label,
                                        timeout_s=1800, theta0=theta0)
    finally:
        if not args.keep_runs:
            shutil.rmtree(runs_root, ignore_errors=True)

    final = {label: run["summary"] for label, run in results.items()}
    accuracy = {label: round(100 * s["eval_accuracy"], 2) for label, s in final.items()}
    upload = {label: s["upload_bytes"] // s["nodes"] for label, s in final.items()}
    wire = {label: s["bytes_sent"] // s["nodes"] for label, s in final.items()}
    per_step_upload = {label: s["upload_bytes_per_step"] for label, s in final.items()}
    per_step_wire = {label: s["wire_bytes_per_step"] for label, s in final.items()}
    summary = {
        "test_accuracy": accuracy,  # percent, held-out 2,000 images, after the last step
        "upload_bytes": upload,  # per worker, whole run
        "wire_bytes": wire,  # per worker, whole run (ring all-gather or all-reduce)
        "accuracy_gap_topk_ef": round(accuracy["dense"] - accuracy["topk_ef"], 2),
        "byte_reduction_topk_ef": round(upload["dense"] / upload["topk_ef"], 2),
        "params_never_updated": {label: round(run["never_updated"], 4) for label, run in results.items()},
        "wire_reduction_topk_ef": round(wire["dense"] / wire["topk_ef"], 2),
        "upload_bytes_per_step": per_step_upload,
        "wire_bytes_per_step": per_step_wire,
        "crossover_workers": crossover_workers(per_step_upload["dense"], per_step_upload["topk_ef"]),
    }
    if "topk" in final:
        summary["accuracy_gap_topk_no_ef"] = round(accuracy["dense"] - accuracy["topk"], 2)
        summary["curve_gap_no_ef_vs_ef"] = curve_gap(results["topk_ef"]["curve"], results["topk"]["curve"])
    if "topk_ef_fp16" in final:
        summary["accuracy_change_fp16_values"] = round(accuracy["topk_ef_fp16"] - accuracy["topk_ef"], 2)
        summary["byte_reduction_topk_ef_fp16"] = round(upload["dense"] / upload["topk_ef_fp16"], 2)
        summary["crossover_workers_fp16"] = crossover_workers(per_step_upload["dense"],
                                                              per_step_upload["topk_ef_fp16"])
    any_summary = next(iter(final.values()))
    config = load_config(CONFIG, common + args.overrides)
    settings = {
        "workers": WORKERS, "batch_size_per_worker": BATCH, "iterations": iterations,
        "epochs": round(any_summary["epochs"], 3), "eval_every": eval_every, "quick": args.quick,
        "model": "comp_ams_cnn", "params": any_summary["params"], "k_ratio": 0.01,
        "k": final["topk_ef"]["k"], "optimizer": "AMSGrad, betas (0.9, 0.999), eps 1e-8 inside the sqrt",
        "ps": {key: getattr(config.ps, key) for key in ("lr", "warmup_steps", "decay_every", "decay_gamma")},
        "overrides": args.overrides,
        "data": "MNIST t10k IDX, 8,000 train (iid over workers) / 2,000 held-out test", "seed": 0,
        "config": "configs/ps_mnist.yaml", "methods": METHODS, "backend": any_summary["backend"],
        "cpu_cores": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "wall_s": round(time.monotonic() - started, 1),
        "wall_s_per_method": {label: round(run["wall_s"], 1) for label, run in results.items()},
        "units": "test_accuracy in percent; bytes per worker (whole run unless *_per_step)",
    }
    payload = {"summary": summary, "settings": settings,
               "curves": {label: run["curve"] for label, run in results.items()}}
    (out / f"{NAME}.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot(payload["curves"], summary, settings, out / f"{NAME}.png")
    print(json.dumps(summary, indent=2))
    print(f"wrote {out / (NAME + '.json')} and {out / (NAME + '.png')} in {settings['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
