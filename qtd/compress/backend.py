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

import torch

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


def select_backend(device: torch.device | str, backend: str = "auto") -> str:
    """The path that runs for a tensor on ``device``; an explicit choice that cannot run there is an error."""
    device = torch.device(device)
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = os.environ.get("QTD_COMPRESS_BACKEND", "auto") or "auto"
        if backend not in BACKENDS:
            raise ValueError(f"QTD_COMPRESS_BACKEND={backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if device.type == "cpu" and numba_available():
            return "numba"
        if device.type == "cuda" and triton_available():
            return "triton"
        return "reference"
    if backend == "numba" and not (device.type == "cpu" and numba_available()):
        raise ValueError(f"the numba path needs numba installed and a CPU tensor (got a {device.type} tensor)")
    if backend == "triton" and not (device.type == "cuda" and triton_available()):
        raise ValueError(f"the triton path needs triton installed and a CUDA tensor (got a {device.type} tensor)")
    return backend
