"""Helpers the benchmark scripts share (not a benchmark itself: `qtd bench` skips names starting with _)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MNIST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
RESULTS = REPO / "benchmarks" / "results"  # the committed results: only full runs write here
QUICK_RESULTS = REPO / "runs" / "bench_quick"  # where --quick runs write by default (runs/ is not committed)
OUT_HELP = ("where NAME.json and its plot go (default benchmarks/results/, the committed results; with --quick "
            "runs/bench_quick/: a quick run never writes over the committed results)")


def results_dir(out: str | Path | None, quick: bool, benchmark: str) -> Path:
    """The directory a benchmark writes its results to, created; called before any work.

    ``out`` is the --out flag (None: the default). A --quick run defaults to ``runs/bench_quick/`` and is
    refused in ``benchmarks/results/``, so it never overwrites the committed figures the README quotes.
    """
    path = Path(out) if out is not None else (QUICK_RESULTS if quick else RESULTS)
    if quick and path.resolve() == RESULTS.resolve():
        sys.exit(f"{benchmark}: a --quick run does not write into {RESULTS} (the committed results); "
                 f"leave out --out (it then writes to {QUICK_RESULTS}) or give another --out DIR")
    path.mkdir(parents=True, exist_ok=True)
    print(f"{benchmark}: results go to {path}", flush=True)
    return path


def mnist_dir(explicit: str | None) -> Path | None:
    """The directory of the MNIST IDX files as :func:`find_mnist` finds it, or None when there is none."""
    candidates = _mnist_candidates(explicit)
    return next((path.resolve() for path in candidates if _holds_mnist(path)), None)


def _holds_mnist(path: Path) -> bool:
    return all((path / name).is_file() or (path / f"{name}.gz").is_file() for name in MNIST_FILES)


def find_mnist(explicit: str | None, benchmark: str) -> Path:
    """The directory of the MNIST IDX files (gzipped or not): --data-root, else QTD_MNIST_DIR, else
    data/mnist in this checkout (where the README says to put them), else ../shared/data/mnist beside this
    checkout or, from a git worktree, beside its main checkout (where the development machines keep them)."""
    candidates = _mnist_candidates(explicit)
    for path in candidates:
        if _holds_mnist(path):
            return path.resolve()
    sys.exit(f"{benchmark}: MNIST IDX files not found in {', '.join(map(str, candidates))}; pass --data-root DIR "
             "(the README's 'Data and models' section says how to get them)")


def _mnist_candidates(explicit: str | None) -> list[Path]:
    candidates = [Path(explicit)] if explicit else []
    if os.environ.get("QTD_MNIST_DIR"):
        candidates.append(Path(os.environ["QTD_MNIST_DIR"]))
    candidates.append(REPO / "data" / "mnist")
    candidates.append(REPO.parent / "shared" / "data" / "mnist")
    git = REPO / ".git"
    if git.is_file() and git.read_text().startswith("gitdir:"):  # a git worktree: look beside the main checkout
        gitdir = Path(git.read_text().partition(":")[2].strip())
        candidates.append(gitdir.parent.parent.parent.parent / "shared" / "data" / "mnist")
    return candidates


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


def time_to_level(curve: list[dict], level: float) -> float | None:
    """First training second at which eval loss <= level, interpolated between evaluation points."""
    previous = None
    for point in curve:
        if point["eval_loss"] <= level:
            if previous is None or previous["eval_loss"] <= level:
                return point["time_s"]
            share = (previous["eval_loss"] - level) / (previous["eval_loss"] - point["eval_loss"])
            return previous["time_s"] + share * (point["time_s"] - previous["time_s"])
        previous = point
    return None


def final_loss(curve: list[dict], last: int = 3) -> float:
    tail = [p["eval_loss"] for p in curve[-last:]]
    return sum(tail) / len(tail)
