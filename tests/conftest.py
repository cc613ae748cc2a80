"""Shared fixtures. ``mnist_dir``: the 10,000-image MNIST test split in IDX format, found without network.
Tests marked ``cuda`` are skipped where torch sees no CUDA device."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MNIST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _main_checkout(repo: Path) -> Path | None:
    """For a git worktree (``.git`` is a file ``gitdir: <main>/.git/worktrees/<name>``), the main checkout."""
    git = repo / ".git"
    if not git.is_file():
        return None
    text = git.read_text().strip()
    if not text.startswith("gitdir:"):
        return None
    gitdir = Path(text.partition(":")[2].strip())
    if gitdir.parent.name != "worktrees":
        return None
    return gitdir.parent.parent.parent


def mnist_candidates() -> list[Path]:
    """QTD_MNIST_DIR if set; else ``data/mnist`` in the checkout (where the README tells users to put the
    files), then ``../shared/data/mnist`` beside the repository or beside the main checkout when this is a
    git worktree (where the development machines keep them)."""
    if os.environ.get("QTD_MNIST_DIR"):
        return [Path(os.environ["QTD_MNIST_DIR"])]
    candidates = [REPO_ROOT / "data" / "mnist", REPO_ROOT.parent / "shared" / "data" / "mnist"]
    main = _main_checkout(REPO_ROOT)
    if main is not None:
        candidates.append(main.parent / "shared" / "data" / "mnist")
    return candidates


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    candidates = mnist_candidates()
    for path in candidates:
        if all((path / name).is_file() for name in MNIST_FILES):
            return path
    pytest.skip("MNIST IDX files (" + ", ".join(MNIST_FILES) + ") not found in "
                + ", ".join(map(str, candidates)) + "; set QTD_MNIST_DIR to their directory")


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.cuda`` tests need a GPU: skipped without one, so `pytest -m cuda` selects exactly them."""
    cuda_tests = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not cuda_tests:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run `pytest -m cuda` on a GPU machine)")
    for item in cuda_tests:
        item.add_marker(skip)
