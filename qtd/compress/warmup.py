"""``warm_up``: compile (or load from the on-disk cache) the fused compression kernels before a run starts.

numba (CPU) and Triton (CUDA) compile a kernel the first time it is called. Left to the first iteration, that
is seconds of compile time inside a timed loop, in every node process at once: 8 processes compiling on 2
cores took 25-30 s. ``warm_up`` makes the first calls up front, on a few elements:

- the first process on a machine to get here compiles and writes numba's cache (see ``_numba_kernels``);
  the others wait on a lock file, then load the cache (a fraction of a second each);
- later runs load the cache and compile nothing.

``qtd launch`` warms up once before torchrun starts, ``python -m qtd.train`` (every node) before it joins the
process group, and ``qtd sim`` before it simulates (:func:`warm_up_for` picks the kernels a config uses). It
changes no result: the kernels are the same either way.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch

from .backend import select_backend
from .packing import pack_bits, unpack_bits
from .quantizer import quantize
from .wire import decode_message, encode_message

LOCK_WAIT_S = 600.0  # a process holding the lock longer than this is stuck: compile without it


def _lock_path() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"qtd-compile-{uid}.lock"


@contextlib.contextmanager
def _one_at_a_time() -> Iterator[None]:
    """Hold an exclusive lock shared by every qtd process of this user on this machine (when the platform
    and the temporary directory allow one; otherwise go ahead alone)."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): compile without the lock
        yield
        return
    try:
        handle = open(_lock_path(), "a")
    except OSError:
        yield
        return
    with handle:
        waited = time.monotonic()
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - waited > LOCK_WAIT_S:
                    break
                time.sleep(0.05)
            except OSError:  # a file system without locks
                break
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_UN)


def warm_up(device: torch.device | str = "cpu", bits: int | None = 4, *, block_sign: bool = False) -> float:
    """Compile or load the fused kernels a run on ``device`` uses, now; return the seconds it took.

    ``bits``: the run's ``compression.bits`` when its models travel quantized (1..8: the message kernels;
    numba serves every width with one compiled version, Triton compiles one per width), else None or 16/32
    (no kernel). ``block_sign``: a parameter-server run with ``ps.compressor=blocksign`` (numba bit packing).
    A run that uses no kernel costs nothing here, not even numba's import. Does nothing on the reference
    path (``QTD_COMPRESS_BACKEND=reference``, or neither numba nor Triton available); a fast path that fails
    here falls back to the reference path as it would later.
    """
    device = torch.device(device)
    quantized = bits is not None and 1 <= bits <= 8
    if not (quantized or block_sign) or select_backend(device) == "reference":
        return 0.0
    started = time.monotonic()
    x = torch.linspace(-1.0, 1.0, 67, device=device)  # not a multiple of 8: the tail loops compile too
    with _one_at_a_time():
        if quantized:
            decode_message(encode_message(x, bits, sender=0, iteration=0))
            quantize(x, bits, key=0)  # the simulator's messages
        if block_sign:
            packed = pack_bits((x >= 0).to(torch.uint8), 1)
            unpack_bits(packed, 1, x.numel())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return time.monotonic() - started


def warm_up_for(config, device: torch.device | str = "cpu") -> float:
    """:func:`warm_up` with what a run of ``config`` (a :class:`qtd.config.Config`) uses."""
    if config.mode == "ps":
        return warm_up(device, None, block_sign=config.ps.compressor == "blocksign")
    return warm_up(device, config.compression.bits)
