"""`python -m qtd.cli.check CONFIG [--set k=v ...]`: check a config and its graph, print topology.nodes.

What the launch scripts run before starting torchrun (and what a user can run before submitting a job):
a bad config or an impossible graph ends here with one ``qtd: error:`` line, not in n node processes.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..config import load_config
from ..errors import QtdError
from ..topology import build_topology


def check_command(config_path: str, overrides: Sequence[str]) -> int:
    """Load and validate the config, build and check its topology; return the number of graph nodes."""
    config = load_config(config_path, overrides)
    build_topology(config.topology)
    return config.topology.nodes


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m qtd.cli.check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable)")
    args = parser.parse_args(argv)
    try:
        print(check_command(args.config, args.overrides))
    except QtdError as exc:
        print(f"qtd: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
