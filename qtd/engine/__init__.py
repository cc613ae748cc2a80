"""Real runs: a node's training loop (:func:`run_node`, one process per graph node, started by torchrun).

Loaded lazily, so that the simulator and the library can import the engine's network-free parts
(:mod:`.problem`, :mod:`.points`, :mod:`.summary`) without the network layer.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NodeDriver", "Problem", "build_problem", "run_node"]


_WHERE = {"run_node": "driver", "NodeDriver": "driver", "Problem": "problem", "build_problem": "problem"}


def __getattr__(attribute: str) -> Any:
    if attribute not in _WHERE:
        raise AttributeError(f"module 'qtd.engine' has no attribute {attribute!r}")
    from importlib import import_module

    return getattr(import_module(f".{_WHERE[attribute]}", __name__), attribute)
