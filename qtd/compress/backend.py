"""Which implementation runs a compression call: the plain-torch reference or a fused fast path.

- ``reference``: plain torch ops; any device; the definition every other path is tested against.
- ``numba``: fused CPU kernels (:mod:`._numba_kernels`), picked automatically for CPU tensors when numba imports.
- ``triton``: fused CUDA kernels (:mod:`._triton_kernels`), picked automatically for CUDA tensors when triton
  imports; used for quantize+pack, unpack+dequantize and quantize (pack_bits/unpack_bits stay on torch there).

``auto`` picks the fast path for the tensor's device and falls back to ``reference`` when it is unavailable.
The environment variable ``QTD_COMPRESS_BACKEND=reference`` forces the reference path everywhere (debugging).
All paths produce bit-identical codes, bytes and values for the same key.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import TypeVar

import torch

from ..echo import shown

T = TypeVar("T")
_FAILED: set[str] = set()  # fast paths that raised at run time in this process; auto no longer picks them

BACKENDS = ("auto", "reference", "numba", "triton")


def numba_available() -> bool:
    from . import _numba_kernels

    return _numba_kernels.AVAILABLE


def triton_available() -> bool:
    try:
        from . import _triton_kernels
    except ImportError:
        return False
    return _triton_kernels.AVAILABLE


def _resolve(device: torch.device | str, backend: str) -> tuple[str, bool]:
    """(path, picked automatically)."""
    device = torch.device(device)
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = os.environ.get("QTD_COMPRESS_BACKEND", "auto") or "auto"
        if backend not in BACKENDS:
            raise ValueError(f"QTD_COMPRESS_BACKEND={shown(backend)}: choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if device.type == "cpu" and "numba" not in _FAILED and numba_available():
            return "numba", True
        if device.type == "cuda" and "triton" not in _FAILED and triton_available():
            return "triton", True
        return "reference", True
    if backend == "numba" and not (device.type == "cpu" and numba_available()):
        raise ValueError(f"the numba path needs numba installed and a CPU tensor (got a {device.type} tensor)")
    if backend == "triton" and not (device.type == "cuda" and triton_available()):
        raise ValueError(f"the triton path needs triton installed and a CUDA tensor (got a {device.type} tensor)")
    return backend, False


def select_backend(device: torch.device | str, backend: str = "auto") -> str:
    """The path that runs for a tensor on ``device``; an explicit choice that cannot run there is an error."""
    return _resolve(device, backend)[0]


def run_path(
    device: torch.device | str, backend: str, fast: dict[str, Callable[[], T]], reference: Callable[[], T]
) -> T:
    """Run the path chosen for ``device`` and ``backend``: ``fast[name]()`` or ``reference()``.

    A fast path without an entry in ``fast`` (triton for bit packing, say) runs the reference. A fast path
    picked by ``auto`` that raises (a kernel that does not compile on this machine, say) is reported once as a
    warning and replaced by the reference path for the rest of the process; one asked for by name raises.
    """
    name, automatic = _resolve(device, backend)
    if name not in fast:
        return reference()
    if not automatic:
        return fast[name]()
    try:
        return fast[name]()
    except Exception as error:  # noqa: BLE001 - any failure of an optional accelerator means: fall back
        _FAILED.add(name)
        warnings.warn(
            f"qtd.compress: the {name} path failed ({error!r}); using the reference path from now on",
            RuntimeWarning, stacklevel=3,
        )
        return reference()
