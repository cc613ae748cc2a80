"""`python -m qtd.train --config CONFIG [--set k=v ...]`: one graph node, as started by torchrun.

    torchrun --nproc_per_node 8 -m qtd.train --config configs/quickstart.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Sequence

from .comm import close_world, init_world, record_blame
from .config import load_config
from .errors import PeerError, QtdError


def train_command(config_path: str, overrides: Sequence[str]) -> int:
    """Build, train, close. A failed peer ends this process at once with a message naming the peer."""
    config = load_config(config_path, overrides)
    from .engine import run_node  # heavy imports after the config is known to be good

    world = init_world(config.comm.backend, config.comm.timeout_s)
    try:
        run_node(config, world)
    except PeerError as exc:
        record_blame(world, exc)  # the other nodes follow it to the cause
        line = f"qtd: node {world.rank}: error: {exc}"
        print(line, file=sys.stderr, flush=True)
        _tell_the_launcher(line, exc.culprit)
        if world.rank == 0:  # node 0 hosts the rendezvous store: keep it up while the others read who failed
            time.sleep(STORE_GRACE_S)
        # Sends and receives still posted to a dead peer would block a clean shutdown: leave now.
        os._exit(1)
    except QtdError as exc:
        print(f"qtd: node {world.rank}: error: {exc}", file=sys.stderr, flush=True)
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m qtd.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set compression.bits=4 (repeatable)")
    args = parser.parse_args(argv)
    try:
        code = train_command(args.config, args.overrides)
    except QtdError as exc:
        print(f"qtd: error: {exc}", file=sys.stderr, flush=True)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
