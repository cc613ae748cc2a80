"""Per-node checkpoints, written atomically; a checkpoint is complete when every node's file exists.

Layout: ``<out_dir>/checkpoints/iter_00000100/node_003.pt``. Each file holds plain tensors and numbers
only, so it loads with ``torch.load(..., weights_only=True)``, and a SHA-256 of its whole content
(every tensor's bytes, dtype and shape, every other value's repr, in key order), checked on load: a
flipped bit or a truncated file is a :class:`CheckpointError`, never a model that loads silently wrong.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .layout import ITER_DIR, checkpoint_dir, complete_iterations, node_file  # noqa: F401 (re-exported)

FORMAT = "qtd-checkpoint-2"
_OLDER_FORMATS = ("qtd-checkpoint-1",)


def content_checksum(state: Any) -> str:
    """SHA-256 of a checkpoint's content: the same for the state saved and the state loaded back."""
    digest = hashlib.sha256()

    def walk(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            digest.update(b"{")
            for key in sorted(value, key=repr):
                digest.update(repr(key).encode())
                walk(value[key])
            digest.update(b"}")
        elif isinstance(value, (list, tuple)):
            digest.update(b"[")
            for item in value:
                walk(item)
            digest.update(b"]")
        else:
            digest.update(repr(value).encode())

    walk(state)
    return digest.hexdigest()


def save_node_checkpoint(out_dir: str | Path, iteration: int, rank: int, state: dict[str, Any]) -> Path:
    """Write this node's state for ``iteration`` atomically (temp file, fsync, rename), with its checksum."""
    path = node_file(out_dir, iteration, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    content = {"format": FORMAT, "iteration": iteration, "rank": rank, **state}
    with open(tmp, "wb") as handle:
        torch.save({**content, "checksum": content_checksum(content)}, handle)
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
    if isinstance(state, dict) and state.get("format") in _OLDER_FORMATS:
        raise CheckpointError(f"checkpoint {str(path)!r} was written by an older qtd ({state['format']}, this qtd "
                              f"reads {FORMAT}): set run.resume=never to start over, or choose another run.out_dir")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a qtd checkpoint (format {FORMAT} expected): "
                              "delete it or set run.resume=never")
    saved = state.pop("checksum", None)
    if saved != content_checksum(state):
        raise CheckpointError(f"checkpoint {str(path)!r} is damaged: its content does not match the checksum it "
                              "was written with (a changed bit, or a partial copy); delete it or set run.resume=never")
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
