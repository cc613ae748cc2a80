"""Monitoring and persistence: TensorBoard, metrics.jsonl, summary.json, progress bar, checkpoints.

Loaded lazily, so that :mod:`.layout` (where checkpoints are) can be read without torch or TensorBoard.
"""

from __future__ import annotations

from typing import Any

_WHERE = {
    "complete_iterations": "layout", "node_file": "layout", "checkpoint_dir": "layout",
    "load_node_checkpoint": "checkpoint", "prune_node_checkpoints": "checkpoint",
    "save_node_checkpoint": "checkpoint", "remove_checkpoints": "checkpoint",
    "JsonlWriter": "writers", "ScalarLogger": "writers", "TensorBoardLogger": "writers",
    "read_jsonl": "writers", "write_json_atomic": "writers", "Progress": "progress",
    "read_result_line": "results", "result_line": "results",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'qtd.metrics' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{_WHERE[name]}", __name__), name)
