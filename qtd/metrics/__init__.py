"""Monitoring and persistence: TensorBoard, metrics.jsonl, summary.json, progress bar, checkpoints."""

from .checkpoint import (complete_iterations, load_node_checkpoint, node_file, prune_node_checkpoints,
                         save_node_checkpoint)
from .progress import Progress
from .result_line import read_result_line, result_line
from .writers import JsonlWriter, ScalarLogger, TensorBoardLogger, read_jsonl, write_json_atomic

__all__ = [
    "JsonlWriter", "Progress", "ScalarLogger", "TensorBoardLogger", "complete_iterations",
    "load_node_checkpoint", "node_file", "prune_node_checkpoints", "read_jsonl", "read_result_line",
    "result_line", "save_node_checkpoint", "write_json_atomic",
]
