"""`qtd topology CONFIG [--set k=v ...] [--png PATH]`: print the graph, W's spectral gap, per-node weights."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..config import check_out_dir, load_config, shown
from .drawing import draw_topology
from .report import describe_graph, topology_report
from .topology import build_topology


def topology_command(config_path: str | None, overrides: Sequence[str], png: str | None = None) -> int:
    """Build and check the configured topology, print its report, optionally save a drawing.

    QtdError (bad config, disconnected graph, unusable kappa, unwritable PNG) propagates to the CLI,
    which prints it as one line and exits non-zero. Returns the exit code (0).
    """
    config = load_config(config_path, overrides).topology
    topology = build_topology(config)
    if png is not None:  # before printing anything: a bad --png is one line, like bad config
        check_out_dir(Path(png).parent, label=f"cannot write the drawing to --png {shown(png)}",
                      advice="give a path in a directory you can write")
    print(topology_report(topology, config))
    if png is not None:
        title = (f"{describe_graph(topology, config)}, {config.weights} weights\n"
                 f"beta {topology.beta:.4f}, spectral gap {topology.spectral_gap:.4f}")
        print(f"drawing       {draw_topology(topology, png, title)}")
    return 0
