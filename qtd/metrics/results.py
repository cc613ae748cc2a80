"""The one line a finished run ends with (``qtd launch`` and ``qtd sim``), read from its ``summary.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ..echo import cut


def _number(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"


def result_line(summary: Mapping[str, Any], out_dir: str | Path) -> str:
    """``qtd: ALGORITHM: N iterations, T s of training, eval loss L, accuracy A, ... (results in OUT)``.

    A simulated run says "virtual time" and adds its wall-clock seconds. Keys a summary lacks read "n/a".
    """
    simulated = bool(summary.get("simulated"))
    clock = "virtual time" if simulated else "training time"
    parts = [f"{_number(summary.get('iterations'), 'd')} iterations",
             f"{clock} {_number(summary.get('time_s'), '.1f')} s",
             f"eval loss {_number(summary.get('eval_loss'), '.4f')}",
             f"accuracy {_number(summary.get('eval_accuracy'), '.4f')}",
             f"consensus error {_number(summary.get('consensus_error'), '.3g')}"]
    sent = summary.get("bytes_sent")
    parts.append(f"{_number(sent / 1e6, '.1f') if isinstance(sent, (int, float)) else 'n/a'} MB sent")
    wall = f", {_number(summary.get('wall_s'), '.1f')} s wall" if simulated else ""
    name = cut(str(summary.get("algorithm", "run")), 40)
    return f"qtd: {name}: {', '.join(parts)}{wall}; results in {cut(str(out_dir))}"


def read_result_line(out_dir: str | Path) -> str | None:
    """The result line of the run in ``out_dir``, or None when its summary.json is missing or unreadable."""
    try:
        summary = json.loads((Path(out_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return result_line(summary, out_dir) if isinstance(summary, dict) else None
