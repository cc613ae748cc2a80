"""Helpers the benchmark scripts share (not a benchmark itself: `qtd bench` skips names starting with _)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MNIST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def find_mnist(explicit: str | None, benchmark: str) -> Path:
    """The directory of the MNIST IDX files (gzipped or not): --data-root, else QTD_MNIST_DIR, else
    ../shared/data/mnist beside this checkout or, from a git worktree, beside its main checkout."""
    candidates = [Path(explicit)] if explicit else []
    if os.environ.get("QTD_MNIST_DIR"):
        candidates.append(Path(os.environ["QTD_MNIST_DIR"]))
    candidates.append(REPO.parent / "shared" / "data" / "mnist")
    git = REPO / ".git"
    if git.is_file() and git.read_text().startswith("gitdir:"):  # a git worktree: look beside the main checkout
        gitdir = Path(git.read_text().partition(":")[2].strip())
        candidates.append(gitdir.parent.parent.parent.parent / "shared" / "data" / "mnist")
    for path in candidates:
        if all((path / name).is_file() or (path / f"{name}.gz").is_file() for name in MNIST_FILES):
            return path.resolve()
    sys.exit(f"{benchmark}: MNIST IDX files not found in {', '.join(map(str, candidates))}; pass --data-root DIR")


def write_step_result(path: str | Path, status: str, message: str, details: dict) -> None:
    """One step's outcome for benchmarks/gpu_check.py: ``status`` is passed, failed or skipped; written
    atomically, so a step killed at its timeout leaves either the whole result or none."""
    import json

    if status not in ("passed", "failed", "skipped"):
        raise ValueError(f"status={status!r}: use passed, failed or skipped")
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"status": status, "message": message, "details": details}, indent=2) + "\n")
    os.replace(tmp, path)
