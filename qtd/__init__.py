"""qtd: straggler-robust, communication-efficient decentralized training in PyTorch.

``qtd.Decentralized`` and ``qtd.TopKAMSGrad`` (:mod:`qtd.api`) are loaded on first use, so that importing a
light part of qtd (``import qtd.config``, which checks configs) does not load torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("Decentralized", "Round", "TopKAMSGrad")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'qtd' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(".api", __name__), name)
