"""How fast the virtual-time simulator runs the paper's setting on one CPU thread.

    python benchmarks/sim_speed.py            # 1,000 iterations per method (~10 minutes on 2 cores)
    python benchmarks/sim_speed.py --quick    # 50 iterations per method (~1 minute, to runs/bench_quick/)
    python benchmarks/sim_speed.py --out DIR  # where sim_speed.json and sim_speed.png go

The configs are configs/paper/*.yaml: 50 nodes on an Erdős–Rényi(0.4) graph, the 784-50-10 MLP (39,760
parameters), 200 MNIST images per node, each method with its tuned settings. Every run evaluates the
network-average model on all 10,000 images ten times. The wall-clock seconds include everything a
simulated run does except building the problem (data loading), which is timed apart. Asynchronous DSGD
steps one node at a time (an event queue), so its iterations are rounds of 50 node steps.

Also measured: QuanTimed-DSGD with per-node gradients in a Python loop over nodes (``gradient_mode=loop``)
instead of one ``torch.func.vmap`` call over all 50 nodes, to show what the vectorisation buys.
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
from qtd.sim import Simulation  # noqa: E402

NAME = "sim_speed"
METHODS = ("quantimed", "qdsgd", "dsgd", "allreduce_sgd", "async_dsgd")


def measure(algorithm: str, iterations: int, data_root: Path, gradient_mode: str = "auto") -> dict:
    config = load_config(REPO / "configs" / "paper" / f"{algorithm}.yaml", [
        f"data.root={data_root}", f"run.iterations={iterations}", f"run.eval_every={max(1, iterations // 10)}",
        "run.progress=false", "run.out_dir=runs/sim_speed_unused"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        started = time.perf_counter()
        sim = Simulation(config, write=False, node_logs=False, progress=False, gradient_mode=gradient_mode)
        built = time.perf_counter()
        result = sim.run()
        done = time.perf_counter()
    run_s = done - built
    row = {"algorithm": algorithm, "gradient_mode": gradient_mode, "iterations": result.summary["iterations"],
           "nodes": config.topology.nodes, "parameters": sim.numel, "setup_s": built - started, "run_s": run_s,
           "iterations_per_s": result.summary["iterations"] / run_s, "evaluations": len(result.rows),
           "virtual_time_s": result.summary["time_s"], "final_loss": result.summary["eval_loss"]}
    print(f"  {algorithm:14s} {gradient_mode:5s} {row['iterations']:5d} iterations in {run_s:6.1f} s "
          f"({row['iterations_per_s']:.1f}/s; setup {row['setup_s']:.1f} s), final loss {row['final_loss']:.4f}",
          flush=True)
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    labels = [f"{r['algorithm']}\n({r['gradient_mode']})" for r in rows]
    ax.bar(labels, [r["iterations_per_s"] for r in rows], color="tab:blue")
    ax.set_ylabel("simulated iterations per second")
    ax.set_title(f"qtd sim, {rows[0]['nodes']} nodes x {rows[0]['parameters']:,} parameters, one CPU thread",
                 fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="50 iterations per method (about a minute)")
    parser.add_argument("--out", default=None, help=OUT_HELP)
    parser.add_argument("--data-root", default=None, help="directory of the MNIST IDX files")
    args = parser.parse_args()
    out = results_dir(args.out, args.quick, NAME)
    torch.set_num_threads(1)
    iterations = 50 if args.quick else 1000
    loop_iterations = 20 if args.quick else 200
    data_root = find_mnist(args.data_root, NAME)
    rows = [measure(a, iterations, data_root) for a in METHODS]
    rows.append(measure("quantimed", loop_iterations, data_root, gradient_mode="loop"))

    vmap = next(r for r in rows if r["algorithm"] == "quantimed" and r["gradient_mode"] == "auto")
    summary = {
        "iterations": iterations,
        "run_s": {r["algorithm"]: round(r["run_s"], 2) for r in rows if r["gradient_mode"] == "auto"},
        "iterations_per_s": {r["algorithm"]: round(r["iterations_per_s"], 2) for r in rows
                             if r["gradient_mode"] == "auto"},
        "quantimed_loop_iterations_per_s": round(rows[-1]["iterations_per_s"], 2),
        "vmap_speedup_over_loop": round(vmap["iterations_per_s"] / rows[-1]["iterations_per_s"], 2),
        "slowest_minutes_per_1000_iterations": round(max(1000 / r["iterations_per_s"] for r in rows
                                                         if r["gradient_mode"] == "auto") / 60, 2),
    }
    settings = {"quick": args.quick, "threads": torch.get_num_threads(), "torch": torch.__version__,
                "python": platform.python_version(), "machine": platform.machine(),
                "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
    (out / f"{NAME}.json").write_text(json.dumps({"name": NAME, "summary": summary, "settings": settings,
                                                       "runs": rows}, indent=2) + "\n")
    plot(rows, out / f"{NAME}.png")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
