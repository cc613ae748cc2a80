"""`python -m qtd.cli.check CONFIG [--set k=v ...]` (or `qtd check`): check a run before it starts, print
topology.nodes.

What the launch scripts run before starting torchrun (and what a user can run before submitting a job): a bad
config, an impossible graph, a run directory that cannot be written, or data that cannot be loaded (or does
not fit the model) ends here with one ``qtd: error:`` line, not in n node processes. Nothing is trained.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..errors import QtdError, one_line
from .args import ArgumentParser, add_config_args
from .preflight import preflight


def check_command(config_path: str, overrides: Sequence[str]) -> int:
    """Check the config, graph, run directory and data (see :mod:`.preflight`); return the number of nodes."""
    return preflight(config_path, overrides, data=True).topology.nodes


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m qtd.cli.check", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        print(check_command(args.config, args.overrides))
    except QtdError as exc:
        print(f"qtd: error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
