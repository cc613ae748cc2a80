"""Loggers behind a tiny interface: TensorBoard scalars, metrics.jsonl, summary.json (the progress bar is
in :mod:`.progress`).

Only the chosen rank writes shared files (metrics.jsonl, summary.json, config.yaml, the global
TensorBoard run); every node writes its own TensorBoard run under ``tensorboard/node_XXX``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping


class ScalarLogger:
    """Do-nothing default; subclasses write somewhere."""

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        pass

    def text(self, tag: str, text: str) -> None:
        pass

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger(ScalarLogger):
    """One TensorBoard run (a directory of event files)."""

    def __init__(self, log_dir: str | Path, flush_secs: int = 10, purge_step: int | None = None) -> None:
        """``purge_step``: a resumed run logs again from this step; TensorBoard hides what the interrupted
        run had logged from there on, so every chart shows each step once."""
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(log_dir), flush_secs=flush_secs, purge_step=purge_step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            if value is not None and math.isfinite(float(value)):
                self._writer.add_scalar(tag, float(value), step)

    def text(self, tag: str, text: str) -> None:
        self._writer.add_text(tag, text)

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        self._writer.add_hparams(clean, finite, run_name=".")

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


class JsonlWriter:
    """Appends one JSON object per line and flushes each, so a crash loses nothing already written."""

    def __init__(self, path: str | Path, truncate: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w" if truncate else "a")

    def write(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(dict(record), default=_json_default) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_jsonl(path: str | Path, skip_damaged: bool = False) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file; ``skip_damaged`` passes over lines that do not parse (a process killed
    while writing its last row leaves half a line)."""
    rows = []
    with open(path) as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError:
                if not skip_damaged:
                    raise
    return rows


def write_json_atomic(path: str | Path, data: Mapping[str, Any]) -> None:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(dict(data), indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)
