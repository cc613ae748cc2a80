"""`python -m qtd.train --config CONFIG [--set k=v ...]`: one graph node, as started by torchrun.

    torchrun --nproc_per_node 8 -m qtd.train --config configs/quickstart.yaml

Before joining the process group, every node checks what it can alone (the config, the graph, that
``run.out_dir`` can be written) and warms up the compression kernels (:func:`qtd.compress.warm_up`: the
first node on a machine compiles them, the others wait and load the compiled copy), so no compile time
falls inside the timed training loop.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from .cli.args import ArgumentParser
from .cli.preflight import preflight
from .errors import PeerError, QtdError, one_line


def train_command(config_path: str, overrides: Sequence[str]) -> int:
    """Check, warm up, build, train, close. A failed peer ends this process at once with a message naming it."""
    config = preflight(config_path, overrides)
    from .comm import choose_backend, close_world, init_world  # heavy imports after the config is known to be good
    from .compress import warm_up_for
    from .engine import run_node

    _, device = choose_backend(config.comm.backend)
    warm_up_for(config, device)
    world = init_world(config.comm.backend, config.comm.timeout_s)
    try:
        run_node(config, world)
    except PeerError as exc:
        print(f"qtd: node {world.rank}: error: {one_line(exc)}", file=sys.stderr, flush=True)
        # Sends and receives still posted to a dead peer would block a clean shutdown: leave now.
        os._exit(1)
    except QtdError as exc:
        print(f"qtd: node {world.rank}: error: {one_line(exc)}", file=sys.stderr, flush=True)
        os._exit(2)
    except KeyboardInterrupt:  # Ctrl-C reaches every node; the launcher says so once
        os._exit(130)
    close_world()
    return 0


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m qtd.train", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set compression.bits=4 (repeatable)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = train_command(args.config, args.overrides)
    except QtdError as exc:
        print(f"qtd: error: {one_line(exc)}", file=sys.stderr, flush=True)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
