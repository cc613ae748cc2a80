"""`python -m qtd.train --config CONFIG [--set k=v ...]`: one graph node, as started by torchrun.

    torchrun --nproc_per_node 8 -m qtd.train --config configs/quickstart.yaml

Before joining the process group, every node checks what it can alone (the config, the graph, that
``run.out_dir`` can be written) and warms up the compression kernels (:func:`qtd.compress.warm_up`: the
first node on a machine compiles them, the others wait and load the compiled copy), so no compile time
falls inside the timed training loop.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Sequence

from .cli.args import ArgumentParser
from .cli.preflight import preflight
from .errors import ConfigError, PeerError, QtdError, one_line


def train_command(config_path: str, overrides: Sequence[str]) -> int:
    """Check, warm up, build, train, close. A failed peer ends this process at once with a message naming it."""
    config = preflight(config_path, overrides)
    from .comm import choose_backend, close_world, init_world  # heavy imports after the config is known to be good
    from .compress import warm_up_for
    from .engine import run_node
    from .engine.supervise import JOIN_ENV

    elastic = config.comm.on_peer_loss == "continue"
    backend = "gloo" if elastic else config.comm.backend  # survivors regroup over gloo (qtd.comm.membership)
    if elastic and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        raise ConfigError("comm.on_peer_loss=continue needs `qtd launch CONFIG`, whose supervisor keeps the "
                          "rendezvous store up when a node dies (under torchrun, the store lives in node 0 and "
                          "torchrun stops every node when one exits): start the run with qtd launch")
    _, device = choose_backend(backend)
    warm_up_for(config, device)
    joined = None
    if elastic and os.environ.get(JOIN_ENV) == "1":  # restarted by qtd launch --max-restarts: join the others
        from .comm import join_world

        world, joined = join_world(backend, config.comm.timeout_s)
    else:
        world = init_world(backend, config.comm.timeout_s, elastic=elastic)
    try:
        run_node(config, world, joined)
    except PeerError as exc:
        from .comm import record_blame

        record_blame(world, exc)  # the other nodes follow it to the cause
        line = f"qtd: node {world.node}: error: {one_line(exc)}"
        print(line, file=sys.stderr, flush=True)
        _tell_the_launcher(line, exc.culprit)
        if world.rank == 0:  # node 0 hosts the rendezvous store: keep it up while the others read who failed
            time.sleep(STORE_GRACE_S)
        # Sends and receives still posted to a dead peer would block a clean shutdown: leave now.
        os._exit(1)
    except QtdError as exc:
        print(f"qtd: node {world.node}: error: {one_line(exc)}", file=sys.stderr, flush=True)
        os._exit(2)
    except KeyboardInterrupt:  # Ctrl-C reaches every node; the launcher says so once
        os._exit(130)
    close_world(world)
    return 0


STORE_GRACE_S = 4.0  # > the heartbeat settle time (1.5 s) plus a reading of the store


def _tell_the_launcher(line: str, culprit: int | None) -> None:
    """torchrun gives each node a file for its last words; qtd's launcher reads whom every node blamed."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    try:
        with open(path, "w") as handle:
            json.dump({"message": line, "timestamp": int(time.time()), "qtd_culprit": culprit}, handle)
    except OSError:
        pass


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
