"""``warm_up``: compile (or load from the on-disk cache) the fused compression kernels before a run starts.

numba (CPU) and Triton (CUDA) compile a kernel the first time it is called. Left to the first iteration, that
is seconds of compile time inside a timed loop, in every node process at once: 8 processes compiling on 2
cores took 25-30 s. ``warm_up`` makes the first calls up front, on a few elements:

- when numba's on-disk cache (see ``_numba_kernels``) lacks a kernel, the first process on the machine to get
  here compiles it and writes the cache while the others wait on a lock file, then load it;
- when the cache has them (every run after the first, and the nodes of ``qtd launch``, which warms up before
  starting them), every process loads them at once, without the lock: loading is a fraction of a second of
  CPU, and taking turns made 8 processes on a busy 2-core machine wait 20 s for each other.

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
_QUANTIZED_KERNELS = ("_quantize_pack_kernel", "_unpack_dequantize_kernel", "_quantize_codes")
_PACKING_KERNELS = ("_pack", "_unpack")
_BLOCKED_KERNELS = ("_quantize_pack_blocks_kernel", "_unpack_dequantize_blocks_kernel")


def _lock_path() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"qtd-compile-{uid}.lock"


def _numba_cached(kernels: tuple[str, ...]) -> bool:
    """Whether numba's cache holds a fresh compiled copy of each kernel (same source, same numba); False when
    unsure. Uses numba's cache index reader, a private API: any surprise means "not cached"."""
    try:
        from . import _numba_kernels

        return all(getattr(_numba_kernels, name)._cache._cache_file._load_index() for name in kernels)
    except Exception:  # noqa: BLE001 - another numba version, no cache: take the lock, compile
        return False


@contextlib.contextmanager
def _one_at_a_time(needed: bool = True) -> Iterator[None]:
    """Hold an exclusive lock shared by every qtd process of this user on this machine (when ``needed``, and
    when the platform and the temporary directory allow one; otherwise go ahead alone)."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): compile without the lock
        yield
        return
    if not needed:
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


def warm_up(device: torch.device | str = "cpu", bits: int | None = 4, *, block_sign: bool = False,
            block_size: int = 0) -> float:
    """Compile or load the fused kernels a run on ``device`` uses, now; return the seconds it took.

    ``bits``: the run's ``compression.bits`` when its models travel quantized (1..8: the message kernels;
    numba serves every width with one compiled version, Triton compiles one per width), else None or 16/32
    (no kernel). ``block_size``: the run's ``compression.block_size`` (> 0: the block-wise kernels too;
    Triton specializes on the size). ``block_sign``: a parameter-server run with ``ps.compressor=blocksign`` (numba bit packing).
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
    kernels = ((_QUANTIZED_KERNELS if quantized else ()) + (_BLOCKED_KERNELS if quantized and block_size else ())
               + (_PACKING_KERNELS if block_sign else ()))
    compiling = device.type != "cpu" or select_backend(device) != "numba" or not _numba_cached(kernels)
    with _one_at_a_time(needed=compiling):
        if quantized:
            decode_message(encode_message(x, bits, sender=0, iteration=0))
            quantize(x, bits, key=0)  # the simulator's messages
            if block_size:
                decode_message(encode_message(x, bits, sender=0, iteration=0, block_size=block_size))
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
    return warm_up(device, config.compression.bits, block_size=config.compression.block_size)
