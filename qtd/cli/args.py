"""Argument parsing for every qtd entry point: a bad flag ends in one ``qtd: error:`` line, like bad config.

argparse's own error output is a usage block and ``PROG: error: ...``; :class:`ArgumentParser` prints one
bounded line instead, naming the flag and pointing at ``--help``. :func:`count_in` is the type of numeric
flags that have a range (``--max-restarts``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

from ..echo import shown
from ..errors import one_line


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (subcommand parsers made by ``add_subparsers`` inherit it)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"qtd: error: {one_line(message)} (see {self.prog} --help)\n")
        sys.exit(2)


def count_in(flag: str, low: int, high: int, meaning: str) -> Callable[[str], int]:
    """An argparse ``type``: an integer in low..high; anything else names the flag and the range."""

    def parse(text: str) -> int:
        try:
            value = int(text) if len(text) < 30 else None
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{shown(text)} is not allowed: give {meaning}, an integer in "
                                             f"{low}..{high}")
        return value

    parse.__name__ = flag  # argparse names a failed type by its __name__
    return parse


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """CONFIG and repeatable --set KEY=VALUE, as every command that reads a config takes them."""
    parser.add_argument("config", help="YAML config file, e.g. configs/quickstart.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set topology.nodes=8 (repeatable)")
