"""What a node of a real run writes to its run directory (README: "What a run writes"), opened and closed in one place.

Rank 0 writes ``config.yaml``, ``metrics.jsonl`` and ``tensorboard/global``; every rank writes its own
``nodes/node_XXX.jsonl`` and ``tensorboard/node_XXX``. A run resumed at iteration ``start`` keeps the
metrics rows up to ``start`` and has TensorBoard purge the steps after it, which the run redoes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..config import Config, config_to_dict, dump_config, save_config
from ..metrics import JsonlWriter, Progress, ScalarLogger, TensorBoardLogger, read_jsonl


class RunFiles:
    """The open writers of one node: ``metrics`` (rank 0, else None), ``global_tb`` (a no-op logger
    off rank 0), ``node_tb``, ``node_log`` and the rank-0 progress bar."""

    def __init__(self, config: Config, rank: int, world_size: int, desc: str, start: int = 0,
                 lead: bool | None = None) -> None:
        """``rank``: this node (graph node id); ``lead``: it writes the run's files (default: node 0 does)."""
        out, run = Path(config.run.out_dir), config.run
        purge_step = start + 1 if start else None  # a resumed run redoes the steps after its checkpoint
        self.metrics: JsonlWriter | None = None
        self.global_tb: ScalarLogger = ScalarLogger()
        lead = rank == 0 if lead is None else lead
        if lead:
            out.mkdir(parents=True, exist_ok=True)
            save_config(config, out / "config.yaml")
            self.metrics = _resumed_log(out / "metrics.jsonl", start)
            self.global_tb = TensorBoardLogger(out / "tensorboard" / "global", purge_step=purge_step)
            self.global_tb.text("config", "```\n" + dump_config(config) + "\n```")
        self.node_tb = TensorBoardLogger(out / "tensorboard" / f"node_{rank:03d}", purge_step=purge_step)
        self.node_log = _resumed_log(out / "nodes" / f"node_{rank:03d}.jsonl", start)
        self.progress = Progress(run.iterations, initial=start, enabled=run.progress and lead,
                                 desc=f"{desc} x{world_size}", time_budget_s=run.time_budget_s)

    def lead(self, config: Config) -> None:
        """An elastic run lost node 0, and this node is the lowest left: it writes ``metrics.jsonl`` and
        ``tensorboard/global`` from now on, after what node 0 wrote (a half row it left is ended first)."""
        if self.metrics is not None:
            return
        out = Path(config.run.out_dir)
        path = out / "metrics.jsonl"
        if path.exists() and path.stat().st_size:
            with open(path, "rb+") as handle:
                handle.seek(-1, 2)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")
        self.metrics = JsonlWriter(path)
        self.global_tb = TensorBoardLogger(out / "tensorboard" / "global")

    def close(self) -> None:
        self.progress.close()
        self.node_log.close()
        self.node_tb.close()
        self.global_tb.close()
        if self.metrics is not None:
            self.metrics.close()


def _resumed_log(path: Path, start: int) -> JsonlWriter:
    """A node's log, keeping the rows up to the resume point ``start``: the iterations after it are redone."""
    history = read_jsonl(path, skip_damaged=True) if start and path.exists() else []
    writer = JsonlWriter(path, truncate=True)
    for row in history:
        if isinstance(row, dict) and isinstance(row.get("iteration"), (int, float)) and row["iteration"] <= start:
            writer.write(row)
    return writer


def clear_run_files(out: Path) -> bool:
    """Remove what an earlier run wrote into ``out`` (only qtd's own names), so that a run starting over
    there neither keeps an older run's checkpoints (which would outrank its own) nor splices its metrics
    and TensorBoard curves onto the older ones. Returns whether anything was there."""
    found = False
    for pattern in ("checkpoints/iter_*", "tensorboard/global", "tensorboard/node_*", "nodes/node_*.jsonl",
                    "metrics.jsonl", "summary.json", "model.pt", "model_node_*.pt", "sim_models.pt"):
        for path in out.glob(pattern):
            found = True
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    return found


def flat_hparams(config: Config) -> dict[str, Any]:
    """The config as TensorBoard hyperparameters: dotted keys, scalar values (others as strings)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                walk(f"{prefix}{key}.", child)
        else:
            flat[prefix.rstrip(".")] = value if isinstance(value, (int, float, str, bool)) else str(value)

    walk("", config_to_dict(config))
    return flat
