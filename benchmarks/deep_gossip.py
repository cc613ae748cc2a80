"""Compressed-difference gossip on a CNN at 2 bits: how far apart the nodes' models stay, and what it costs in
accuracy against unquantized DSGD at the same number of samples.

    python benchmarks/deep_gossip.py            # the committed result (about 25 minutes on one CPU thread)
    python benchmarks/deep_gossip.py --quick    # 40 iterations, one setting per method (~3 minutes, to runs/bench_quick/)
    python benchmarks/deep_gossip.py --out DIR  # where deep_gossip.json and deep_gossip.png go

Setting: 8 nodes on a ring, qtd's CNN (``model.name=cnn``, 421,642 parameters), MNIST (the 10,000 images of
the t10k split: 8,000 to train, 1,000 per node, iid; the eval loss and accuracy are the network-average
model's on 1,000 of the 2,000 held out), on the simulator's virtual clock (the same update rules and wire
messages as real runs). Every node computes 20 samples per iteration in every method: B = 20 for the
fixed-batch ones, and for the deadline-bound ones a fixed emulated speed of 100 samples/s with T_d = 0.2 s,
so the methods are compared at the same number of samples. Every method takes the same effective gradient
step, 0.05 (alpha; alpha * eps for QuanTimed, whose rule scales the gradient by eps), and the grid of its
consensus knob (eps for QuanTimed, gamma for the CHOCO ones); its run with the lowest final eval loss is the
one reported. Constant step sizes, overlap on, seed 0.

Methods: DSGD with 32-bit model copies (the reference), QuanTimed-DSGD at 2 bits (and at 4 bits, for
context) and QuanTimed-CHOCO (``quantimed_choco``) at 2 bits. CHOCO-SGD (``choco``) is not run apart: with
every node computing the same 20 samples per iteration its iterates are QuanTimed-CHOCO's exactly (the
deadline changes when a node stops computing, not the maths), only its time per iteration differs.

Summary: ``consensus_ratio_quantimed_over_quantimed_choco`` (QuanTimed's final consensus error over
QuanTimed-CHOCO's, both at 2 bits; the issue's bar is at least 100) and
``accuracy_gap_vs_dsgd_points`` (DSGD's final accuracy minus QuanTimed-CHOCO's, in points; the bar is at
most 0.5).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from _common import OUT_HELP, find_mnist, results_dir  # noqa: E402
from qtd.config import load_config  # noqa: E402
from qtd.sim import simulate  # noqa: E402

NAME = "deep_gossip"
NODES, SAMPLES, SPEED, STEP = 8, 20, 100.0, 0.05
# method label -> (algorithm.name, bits, the grid of its consensus knob as overrides)
METHODS: dict[str, tuple[str, int, list[list[str]]]] = {
    "dsgd_32bit": ("dsgd", 32, [[]]),
    "quantimed_2bit": ("quantimed", 2, [[f"algorithm.eps={e}", f"algorithm.alpha={STEP / e:g}"] for e in (0.2, 0.5)]),
    "quantimed_4bit": ("quantimed", 4, [[f"algorithm.eps={e}", f"algorithm.alpha={STEP / e:g}"] for e in (0.5,)]),
    "quantimed_choco_2bit": ("quantimed_choco", 2, [[f"algorithm.gamma={g}"] for g in (0.03, 0.1, 0.3)]),
}


def base_overrides(data_root: Path, iterations: int) -> list[str]:
    return [
        "topology.kind=ring", f"topology.nodes={NODES}", "run.seed=0", "data.name=mnist_idx",
        f"data.root={data_root}", "data.partition=iid", "data.test_fraction=0.2", "data.eval_samples=1000",
        "model.name=cnn", "algorithm.schedule=constant", f"algorithm.alpha={STEP}",
        f"algorithm.batch_size={SAMPLES}", "algorithm.micro_batch_size=5", f"algorithm.deadline_s={SAMPLES / SPEED:g}",
        "emulation.speed_distribution=fixed", f"emulation.speeds=[{', '.join([f'{SPEED:g}'] * NODES)}]",
        "algorithm.overlap=true", f"run.iterations={iterations}", f"run.eval_every={max(1, iterations // 12)}",
        "run.progress=false", "run.out_dir=runs/deep_gossip_unused",
    ]


def run_one(label: str, algorithm: str, bits: int, knob: list[str], base: list[str]) -> dict:
    config = load_config(REPO / "configs" / "quickstart.yaml",
                         base + [f"algorithm.name={algorithm}", f"compression.bits={bits}", *knob])
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = simulate(config, write=False, node_logs=False, progress=False)
    summary = result.summary
    samples = [sum(node) for node in result.samples]
    row = {"method": label, "algorithm": algorithm, "bits": bits, "settings": knob,
           "iterations": summary["iterations"], "samples_per_node": samples,
           "final_eval_loss": summary["eval_loss"], "final_eval_accuracy": summary["eval_accuracy"],
           "final_consensus_error": summary["consensus_error"], "bytes_sent": summary["bytes_sent"],
           "diverged": summary["diverged"], "wall_s": round(time.perf_counter() - started, 1),
           "curve": [{"iteration": r["iteration"], "eval_loss": r["eval_loss"], "eval_accuracy": r["eval_accuracy"],
                      "consensus_error": r["consensus_error"]} for r in result.rows]}
    print(f"  {label:22s} {' '.join(knob) or '-':40s} loss {row['final_eval_loss']}  acc {row['final_eval_accuracy']}  "
          f"consensus {row['final_consensus_error']:.3g}  ({row['wall_s']} s)", flush=True)
    return row


def best(rows: list[dict]) -> dict:
    """The run with the lowest final eval loss (a diverged run has none and is never chosen)."""
    finite = [r for r in rows if r["final_eval_loss"] is not None]
    return min(finite, key=lambda r: r["final_eval_loss"]) if finite else rows[0]


def plot(chosen: dict[str, dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for label, row in chosen.items():
        its = [p["iteration"] for p in row["curve"]]
        left.plot(its, [p["consensus_error"] for p in row["curve"]], marker=".", label=label)
        right.plot(its, [p["eval_accuracy"] for p in row["curve"]], marker=".", label=label)
    left.set_yscale("log")
    left.set_xlabel("iteration (20 samples per node each)")
    left.set_ylabel("consensus error (1/n) sum ||x_i - x_bar||^2")
    right.set_xlabel("iteration (20 samples per node each)")
    right.set_ylabel("eval accuracy of the average model")
    right.set_ylim(0.5, 1.0)
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    right.legend(fontsize=8)
    fig.suptitle(f"{NODES} nodes on a ring, CNN on MNIST, simulator", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40 iterations, one setting per method")
    parser.add_argument("--out", default=None, help=OUT_HELP)
    parser.add_argument("--data-root", default=None, help="directory of the MNIST IDX files")
    parser.add_argument("--iterations", type=int, default=None, help="iterations per run (default 300; quick 40)")
    args = parser.parse_args()
    out = results_dir(args.out, args.quick, NAME)
    torch.set_num_threads(1)
    iterations = args.iterations or (40 if args.quick else 300)
    base = base_overrides(find_mnist(args.data_root, NAME), iterations)
    started = time.perf_counter()
    runs: dict[str, list[dict]] = {}
    for label, (algorithm, bits, grid) in METHODS.items():
        runs[label] = [run_one(label, algorithm, bits, knob, base) for knob in (grid[-1:] if args.quick else grid)]
    chosen = {label: best(rows) for label, rows in runs.items()}
    qtd_choco, quantimed, dsgd = chosen["quantimed_choco_2bit"], chosen["quantimed_2bit"], chosen["dsgd_32bit"]
    assert len({tuple(r["samples_per_node"]) for r in chosen.values()}) == 1, "the methods saw different samples"

    def ratio(a, b):
        return round(a / b, 1) if a is not None and b else None

    summary = {
        "iterations": iterations, "samples_per_node": dsgd["samples_per_node"][0],
        "final_consensus_error": {label: row["final_consensus_error"] for label, row in chosen.items()},
        "final_eval_accuracy": {label: row["final_eval_accuracy"] for label, row in chosen.items()},
        "final_eval_loss": {label: row["final_eval_loss"] for label, row in chosen.items()},
        "bytes_sent": {label: row["bytes_sent"] for label, row in chosen.items()},
        "chosen_settings": {label: row["settings"] for label, row in chosen.items()},
        "consensus_ratio_quantimed_over_quantimed_choco": ratio(quantimed["final_consensus_error"],
                                                                qtd_choco["final_consensus_error"]),
        "accuracy_gap_vs_dsgd_points": round(100 * (dsgd["final_eval_accuracy"] - qtd_choco["final_eval_accuracy"]), 2),
    }
    settings = {"quick": args.quick, "nodes": NODES, "topology": "ring", "model": "cnn", "data": "mnist_idx t10k",
                "effective_step": STEP, "samples_per_iteration": SAMPLES, "deadline_s": SAMPLES / SPEED,
                "speed": SPEED, "base_overrides": base, "threads": torch.get_num_threads(), "torch": torch.__version__,
                "python": platform.python_version(), "machine": platform.machine(),
                "wall_s": round(time.perf_counter() - started, 1),
                "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
    (out / f"{NAME}.json").write_text(json.dumps({"name": NAME, "summary": summary, "settings": settings,
                                                  "runs": runs}, indent=2) + "\n")
    plot(chosen, out / f"{NAME}.png")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
