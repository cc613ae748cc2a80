"""Run a node's training loop from Python instead of the CLI. Start it like any torchrun script:

    torchrun --standalone --nproc_per_node 8 examples/train_from_python.py

Every process builds the same config, joins the process group and trains its own graph node. Extra
arguments are config overrides, e.g. ``topology.nodes=4`` (with ``--nproc_per_node 4``).
"""

import sys

from qtd.comm import close_world, init_world
from qtd.compress import warm_up_for
from qtd.config import load_config
from qtd.engine import run_node


def main() -> None:
    overrides = ["run.out_dir=runs/from_python", "run.iterations=100", *sys.argv[1:]]
    config = load_config("configs/quickstart.yaml", overrides)
    warm_up_for(config)  # compile the compression kernels now, not in the first iteration
    world = init_world(config.comm.backend, config.comm.timeout_s)
    try:
        summary = run_node(config, world)  # the run summary on rank 0, None elsewhere
        if summary is not None:
            print(f"accuracy {summary['eval_accuracy']:.3f} after {summary['iterations']} iterations")
    finally:
        close_world(world)


if __name__ == "__main__":
    main()
