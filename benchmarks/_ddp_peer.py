"""Plain torch DistributedDataParallel, the peer qtd is measured against (started by torchrun, one process per node).

    torchrun --nnodes 4 ... benchmarks/_ddp_peer.py --config CONFIG [--set key=value ...] [--fp16-hook]

This is what a user would otherwise run: ``DistributedDataParallel`` around the model, ``torch.optim.SGD``
with lr = ``algorithm.alpha``, a batch of ``algorithm.batch_size`` local samples per process and step,
and with ``--fp16-hook`` torch's own ``fp16_compress_hook``. Nothing of qtd's communication or update
code is used. Only the problem comes from qtd's builders (``qtd.engine.problem``: the dataset, its
split and per-node partition, the initial model, the evaluation set), so that DDP trains exactly what
qtd's methods train, from the same first model, on the same local samples.

It writes what a qtd run writes, so the benchmarks read both alike: ``metrics.jsonl`` (the eval loss
and accuracy of the model every ``run.eval_every`` steps, against training wall-clock seconds with
evaluation pauses excluded), ``summary.json`` and ``nodes/node_XXX.jsonl`` (per step: samples, train
loss, seconds). It stops at ``run.iterations`` steps or once ``run.time_budget_s`` training seconds
have passed (checked at evaluations, as qtd does). ``bytes_sent`` is what gloo's ring all-reduce moves
for the gradient (2 (n-1)/n of it per process, 4 or 2 bytes per value); the one-box cluster's veth
counters measure the real wire bytes of every method.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(prog="_ddp_peer.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--fp16-hook", action="store_true",
                        help="compress gradients to fp16 with torch's ddp_comm_hooks.default_hooks.fp16_compress_hook")
    args = parser.parse_args()

    if "RANK" not in os.environ:
        sys.exit("_ddp_peer.py: error: start it with torchrun, one process per node (e.g. qtd cluster run "
                 "--machines 4 -- benchmarks/_ddp_peer.py --config CONFIG)")
    from qtd.config import load_config
    from qtd.errors import QtdError

    try:
        config = load_config(args.config, args.overrides)
    except QtdError as exc:
        sys.exit(f"_ddp_peer.py: error: {exc}")

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel

    from qtd.engine.points import evaluate_sum
    from qtd.costs import ring_allreduce_bytes
    from qtd.engine.problem import build_problem, module_seed

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=config.comm.timeout_s))
    rank, world = dist.get_rank(), dist.get_world_size()
    if config.topology.nodes != world:
        sys.exit(f"_ddp_peer.py: error: topology.nodes={config.topology.nodes} but {world} processes were started")
    run, algo = config.run, config.algorithm
    out = Path(run.out_dir)
    problem = build_problem(config)
    model = copy.deepcopy(problem.template)
    ddp = DistributedDataParallel(model)
    if args.fp16_hook:
        ddp.register_comm_hook(state=None, hook=default_hooks.fp16_compress_hook)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=algo.alpha)
    sampler = problem.node_sampler(rank, run.seed)
    torch.manual_seed(module_seed(run.seed, rank))  # as a qtd node seeds its module randomness
    shard = problem.eval_indices[rank::world]
    grad_bytes = sum(p.numel() for p in model.parameters()) * (2 if args.fp16_hook else 4)
    name = "ddp_fp16" if args.fp16_hook else "ddp"

    (out / "nodes").mkdir(parents=True, exist_ok=True)
    node_log = open(out / "nodes" / f"node_{rank:03d}.jsonl", "w")  # opened when training begins
    metrics = open(out / "metrics.jsonl", "w") if rank == 0 else None
    train_s, steps, bytes_sent, point = 0.0, 0, 0, None

    def evaluate() -> dict:
        loss_sum, correct, count = evaluate_sum(model, problem.eval_set, shard, torch.device("cpu"))
        over = 1.0 if run.time_budget_s and train_s >= run.time_budget_s else 0.0
        totals = torch.tensor([loss_sum, correct, count, train_s, bytes_sent, over], dtype=torch.float64)
        dist.all_reduce(totals)
        loss, right, n, time_sum, sent, over_sum = totals.tolist()
        return {"iteration": steps, "time_s": time_sum / world, "eval_loss": loss / max(n, 1),
                "eval_accuracy": right / max(n, 1), "consensus_error": 0.0, "bytes_sent": int(sent),
                "eval_bytes": 0, "over_budget": over_sum > 0}

    try:
        while steps < run.iterations:
            start = time.monotonic()
            x, y = sampler.sample(algo.batch_size)
            loss = F.cross_entropy(ddp(x), y)
            optimizer.zero_grad(set_to_none=False)
            loss.backward()  # DDP all-reduces the gradient buckets as they become ready
            optimizer.step()
            step_s = time.monotonic() - start
            train_s += step_s
            steps += 1
            bytes_sent += ring_allreduce_bytes(grad_bytes, world)
            node_log.write(json.dumps({"iteration": steps, "time_s": train_s, "samples": algo.batch_size,
                                       "train_loss": float(loss.detach()), "step_s": step_s}) + "\n")
            node_log.flush()  # its first line starts the one-box cluster's throttling
            if steps % run.eval_every == 0 or steps == run.iterations:
                point = evaluate()
                if metrics is not None:
                    metrics.write(json.dumps({k: v for k, v in point.items() if k != "over_budget"}) + "\n")
                    metrics.flush()
                if point["over_budget"]:
                    break
        if point is None or point["iteration"] != steps:
            point = evaluate()
        if rank == 0:
            summary = {"algorithm": name, "mode": "ddp", "nodes": world, "iterations": steps,
                       "time_s": point["time_s"], "eval_loss": point["eval_loss"],
                       "eval_accuracy": point["eval_accuracy"], "consensus_error": 0.0,
                       "bytes_sent": point["bytes_sent"], "eval_bytes": 0, "bits": 16 if args.fp16_hook else 32,
                       "samples_per_iteration": [float(algo.batch_size)] * world,
                       "torch": torch.__version__, "comm_hook": "fp16_compress_hook" if args.fp16_hook else None}
            (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    except RuntimeError as exc:  # a peer died or a collective timed out: one line, not a traceback per rank
        print(f"_ddp_peer.py: rank {rank}: error: {str(exc).strip().splitlines()[-1][:300]}", file=sys.stderr,
              flush=True)
        os._exit(1)
    finally:
        node_log.close()
        if metrics is not None:
            metrics.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
