"""Where checkpoints live, and which are complete; no torch here, so the launcher can look before it starts.

Layout: ``<out_dir>/checkpoints/iter_00000100/node_003.pt``; a checkpoint is complete when every node's
file exists.
"""

from __future__ import annotations

import re
from pathlib import Path

ITER_DIR = re.compile(r"^iter_(\d{8})$")


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def node_file(out_dir: str | Path, iteration: int, rank: int) -> Path:
    return checkpoint_dir(out_dir) / f"iter_{iteration:08d}" / f"node_{rank:03d}.pt"


def complete_iterations(out_dir: str | Path, nodes: int) -> list[int]:
    """Iterations, oldest first, for which every one of ``nodes`` node files exists."""
    root = checkpoint_dir(out_dir)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = ITER_DIR.match(entry.name)
        if match and all((entry / f"node_{r:03d}.pt").is_file() for r in range(nodes)):
            found.append(int(match.group(1)))
    return sorted(found)
