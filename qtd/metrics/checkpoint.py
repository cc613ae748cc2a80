"""Per-node checkpoints, written atomically; a checkpoint is complete when every node's file exists.

Layout: ``<out_dir>/checkpoints/iter_00000100/node_003.pt``. Each file holds plain tensors and numbers
only, so it loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .layout import ITER_DIR, checkpoint_dir, complete_iterations, node_file  # noqa: F401 (re-exported)

FORMAT = "qtd-checkpoint-1"


def save_node_checkpoint(out_dir: str | Path, iteration: int, rank: int, state: dict[str, Any]) -> Path:
    """Write this node's state for ``iteration`` atomically (temp file, fsync, rename)."""
    path = node_file(out_dir, iteration, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        torch.save({"format": FORMAT, "iteration": iteration, "rank": rank, **state}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def load_node_checkpoint(path: str | Path, rank: int | None = None, nodes_hint: str = "") -> dict[str, Any]:
    """Load one node file and check it is a qtd checkpoint for this rank; CheckpointError otherwise."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist") from None
    except Exception as exc:  # truncated zip, pickle garbage, foreign object: all unusable the same way
        raise CheckpointError(
            f"checkpoint {str(path)!r} is unreadable ({type(exc).__name__}); it is truncated or not a qtd "
            "checkpoint: delete it or set run.resume=never to start over") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a qtd checkpoint (format {FORMAT} expected): "
                              "delete it or set run.resume=never")
    if rank is not None and state.get("rank") != rank:
        raise CheckpointError(f"checkpoint {str(path)!r} belongs to node {state.get('rank')}, not node {rank}"
                              f"{nodes_hint}")
    return state


def prune_node_checkpoints(out_dir: str | Path, rank: int, keep: int = 2) -> None:
    """Delete this node's files of all but the ``keep`` newest iterations (and emptied directories)."""
    root = checkpoint_dir(out_dir)
    if not root.is_dir():
        return
    iters = sorted(int(m.group(1)) for e in root.iterdir() if (m := ITER_DIR.match(e.name)))
    for iteration in iters[:-keep] if keep else iters:
        path = node_file(out_dir, iteration, rank)
        path.unlink(missing_ok=True)
        try:
            path.parent.rmdir()
        except OSError:
            pass  # other nodes' files are still there; the last node to prune removes the directory


def remove_checkpoints(out_dir: str | Path) -> None:
    shutil.rmtree(checkpoint_dir(out_dir), ignore_errors=True)
