"""Fused CPU kernels (numba): one pass over the data, no full-size temporaries.

They follow the reference definitions bit for bit: the element hash of :mod:`.noise`, the float32 rounding
of :mod:`.quantizer` (``t = (x - offset) * inv_scale``; ``code = floor(t) + (u < t - floor(t))``, clamped to
the top level) and the layout of :mod:`.packing`. Quantize+pack goes in chunks of ``CHUNK`` elements through a
small code buffer: the quantize loop vectorizes (SIMD over 32-bit lanes), then the chunk is packed. Unpack+
dequantize writes floats straight from the packed bytes. Widths 1, 2, 4 and 8 never split a code across bytes
and get byte-at-a-time loops with constant trip counts (these vectorize); 3, 5, 6 and 7 go 8 codes (one
``bits``-byte group in a 64-bit word) at a time.
No ``fastmath``: contracting multiply-add into FMA would change rounding and break equality with the reference.

Kernels take numpy views of contiguous tensors and release the GIL, so a communication thread can run alongside.
``AVAILABLE`` is False when numba cannot be imported (or its JIT is disabled); callers then use the reference path.

Compiled kernels are cached on disk (numba's ``cache=True``) in ``CACHE_DIR``: ``NUMBA_CACHE_DIR`` when set, else
this package's ``__pycache__`` when it is writable (an editable install), else a per-user directory
(``$XDG_CACHE_HOME/qtd/numba``, or one in the temporary directory), so an installed read-only package compiles
once too. :func:`qtd.compress.warm_up` compiles or loads them before a run's timed loop.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

try:
    import numba
    from numba import njit

    AVAILABLE = not numba.config.DISABLE_JIT
    UNAVAILABLE_REASON = "" if AVAILABLE else "NUMBA_DISABLE_JIT is set"
except Exception as error:  # ImportError, or numba refusing this numpy version
    AVAILABLE = False
    UNAVAILABLE_REASON = f"numba cannot be imported: {error}"

from .noise import LOWBIAS_M1, LOWBIAS_M2, UNIFORM_BITS, UNIFORM_SCALE, split_key
from .blocks import BlockGrids
from .grid import Grid, levels

CHUNK = 4096  # elements per step: a multiple of 8, so every chunk starts on a byte boundary at any width


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
        return True
    except OSError:
        return False


def _user_cache_dirs() -> list[Path]:
    dirs = []
    try:
        dirs.append(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qtd" / "numba")
    except RuntimeError:  # no home directory
        pass
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    dirs.append(Path(tempfile.gettempdir()) / f"qtd-numba-{uid}")
    return dirs


def _cache_dir() -> Path | None:
    """Where the compiled kernels live (see the module docstring); None when nothing is writable."""
    if numba.config.CACHE_DIR:
        return Path(numba.config.CACHE_DIR)
    in_tree = Path(__file__).resolve().parent / "__pycache__"
    if _writable(in_tree):
        return in_tree  # numba's own first choice
    for folder in _user_cache_dirs():
        if _writable(folder):
            numba.config.CACHE_DIR = str(folder)  # numba reads it when each kernel below is defined
            return folder
    return None


CACHE_DIR: Path | None = _cache_dir() if AVAILABLE else None

if AVAILABLE:
    _U32 = np.uint32
    _U64 = np.uint64
    _CACHE = CACHE_DIR is not None  # without a writable place, every process compiles (slower, still correct)
    _jit = njit(cache=_CACHE, nogil=True)

    @njit(cache=_CACHE, nogil=True, inline="always")
    def _lowbias32(x):
        x = _U32(x ^ (x >> _U32(16)))
        x = _U32(x * _U32(LOWBIAS_M1))  # numba widens uint32 products; the cast keeps the low 32 bits
        x = _U32(x ^ (x >> _U32(15)))
        x = _U32(x * _U32(LOWBIAS_M2))
        return _U32(x ^ (x >> _U32(16)))

    @_jit
    def _quantize_codes(x, start, count, codes, top, offset, inv_scale, key_lo, key_hi):
        """codes[i] = stochastic rounding of x[start + i] for i < count (stream counter start + i)."""
        shift = _U32(32 - UNIFORM_BITS)
        unit = np.float32(UNIFORM_SCALE)
        one = np.float32(1.0)
        for i in range(count):
            h = _lowbias32(_U32(_lowbias32(_U32(_U32(start + i) ^ key_lo)) ^ key_hi))
            u = np.float32(h >> shift) * unit
            t = (x[start + i] - offset) * inv_scale
            down = np.floor(t)
            code = down + one if u < t - down else down
            codes[i] = np.uint8(min(code, top))

    @_jit
    def _pack(codes, count, bits, out, first):
        """Pack codes[:count] (masked to ``bits``) into out[first : first + ceil(count*bits/8)]."""
        if bits == 8:
            for i in range(count):
                out[first + i] = codes[i]
            return
        if bits == 1 or bits == 2 or bits == 4:
            _pack_within_bytes(codes, count, bits, out, first)
            return
        mask = _U64((1 << bits) - 1)
        full = count // 8
        for g in range(full):
            word = _U64(0)
            for j in range(8):
                word |= (_U64(codes[g * 8 + j]) & mask) << _U64(j * bits)
            for b in range(bits):
                out[first + g * bits + b] = np.uint8((word >> _U64(8 * b)) & _U64(255))
        rest = count - full * 8
        if rest:
            word = _U64(0)
            for j in range(rest):
                word |= (_U64(codes[full * 8 + j]) & mask) << _U64(j * bits)
            for b in range((rest * bits + 7) // 8):
                out[first + full * bits + b] = np.uint8((word >> _U64(8 * b)) & _U64(255))

    @_jit
    def _pack_within_bytes(codes, count, bits, out, first):
        """bits in 1, 2, 4: no code straddles a byte, so one byte at a time with constant inner loops."""
        mask = np.uint8((1 << bits) - 1)
        per = 8 // bits
        full = count // per
        if bits == 4:
            for i in range(full):
                out[first + i] = (codes[2 * i] & mask) | ((codes[2 * i + 1] & mask) << np.uint8(4))
        elif bits == 2:
            for i in range(full):
                byte = np.uint8(0)
                for j in range(4):
                    byte |= (codes[4 * i + j] & mask) << np.uint8(2 * j)
                out[first + i] = byte
        else:
            for i in range(full):
                byte = np.uint8(0)
                for j in range(8):
                    byte |= (codes[8 * i + j] & mask) << np.uint8(j)
                out[first + i] = byte
        if count > full * per:
            byte = np.uint8(0)
            for j in range(count - full * per):
                byte |= (codes[full * per + j] & mask) << np.uint8(j * bits)
            out[first + full] = byte

    @_jit
    def _unpack(packed, first, count, bits, codes):
        """codes[:count] from packed[first : first + ceil(count*bits/8)]."""
        if bits == 8:
            for i in range(count):
                codes[i] = packed[first + i]
            return
        mask = _U64((1 << bits) - 1)
        if bits == 1 or bits == 2 or bits == 4:  # no code straddles a byte: constant inner loops
            per = 8 // bits
            full = count // per
            if bits == 4:
                for i in range(full):
                    byte = packed[first + i]
                    codes[2 * i] = byte & np.uint8(15)
                    codes[2 * i + 1] = byte >> np.uint8(4)
            elif bits == 2:
                for i in range(full):
                    byte = packed[first + i]
                    for j in range(4):
                        codes[4 * i + j] = (byte >> np.uint8(2 * j)) & np.uint8(3)
            else:
                for i in range(full):
                    byte = packed[first + i]
                    for j in range(8):
                        codes[8 * i + j] = (byte >> np.uint8(j)) & np.uint8(1)
            for k in range(full * per, count):
                codes[k] = np.uint8((_U64(packed[first + full]) >> _U64((k - full * per) * bits)) & mask)
            return
        full = count // 8
        for g in range(full):
            word = _U64(0)
            for b in range(bits):
                word |= _U64(packed[first + g * bits + b]) << _U64(8 * b)
            for j in range(8):
                codes[g * 8 + j] = np.uint8((word >> _U64(j * bits)) & mask)
        rest = count - full * 8
        if rest:
            word = _U64(0)
            for b in range((rest * bits + 7) // 8):
                word |= _U64(packed[first + full * bits + b]) << _U64(8 * b)
            for j in range(rest):
                codes[full * 8 + j] = np.uint8((word >> _U64(j * bits)) & mask)

    @_jit
    def _quantize_pack_kernel(x, bits, out, top, offset, inv_scale, key_lo, key_hi):
        codes = np.empty(CHUNK, np.uint8)
        n = x.size
        for start in range(0, n, CHUNK):
            count = min(CHUNK, n - start)
            _quantize_codes(x, start, count, codes, top, offset, inv_scale, key_lo, key_hi)
            _pack(codes, count, bits, out, start * bits // 8)

    @_jit
    def _unpack_dequantize_kernel(packed, bits, out, offset, scale):
        """out[i] = code_i * scale + offset, straight from the packed bytes (no code buffer: the loops for
        bits 1, 2, 4 and 8 vectorize)."""
        n = out.size
        if bits == 8:
            for i in range(n):
                out[i] = np.float32(packed[i]) * scale + offset
            return
        mask = _U64((1 << bits) - 1)
        if bits == 1 or bits == 2 or bits == 4:
            per = 8 // bits
            full = n // per
            if bits == 4:
                for i in range(full):
                    byte = packed[i]
                    out[2 * i] = np.float32(byte & np.uint8(15)) * scale + offset
                    out[2 * i + 1] = np.float32(byte >> np.uint8(4)) * scale + offset
            elif bits == 2:
                for i in range(full):
                    byte = packed[i]
                    for j in range(4):
                        out[4 * i + j] = np.float32((byte >> np.uint8(2 * j)) & np.uint8(3)) * scale + offset
            else:
                for i in range(full):
                    byte = packed[i]
                    for j in range(8):
                        out[8 * i + j] = np.float32((byte >> np.uint8(j)) & np.uint8(1)) * scale + offset
            for k in range(full * per, n):
                code = (_U64(packed[full]) >> _U64((k - full * per) * bits)) & mask
                out[k] = np.float32(code) * scale + offset
            return
        full = n // 8
        for g in range(full):
            word = _U64(0)
            for b in range(bits):
                word |= _U64(packed[g * bits + b]) << _U64(8 * b)
            for j in range(8):
                out[g * 8 + j] = np.float32((word >> _U64(j * bits)) & mask) * scale + offset
        rest = n - full * 8
        if rest:
            word = _U64(0)
            for b in range((rest * bits + 7) // 8):
                word |= _U64(packed[full * bits + b]) << _U64(8 * b)
            for j in range(rest):
                out[full * 8 + j] = np.float32((word >> _U64(j * bits)) & mask) * scale + offset

    @_jit
    def _quantize_pack_blocks_kernel(x, bits, out, top, offsets, inv_scales, block, key_lo, key_hi):
        """Block b's elements on block b's grid; chunks never cross a block (block is a multiple of 8)."""
        codes = np.empty(CHUNK, np.uint8)
        n = x.size
        for b in range(offsets.size):
            end = min((b + 1) * block, n)
            for start in range(b * block, end, CHUNK):
                count = min(CHUNK, end - start)
                _quantize_codes(x, start, count, codes, top, offsets[b], inv_scales[b], key_lo, key_hi)
                _pack(codes, count, bits, out, start * bits // 8)

    @_jit
    def _block_ranges_kernel(x, block, lows, highs):
        """Each block's min and max in one pass (torch's row-wise aminmax is many times slower); a block
        holding NaN or an infinity gets NaN, which the grids then refuse as torch's ranges would."""
        n = x.size
        for b in range(lows.size):
            start = b * block
            end = min(start + block, n)
            low = x[start]
            high = x[start]
            bad = np.float32(0.0)
            for i in range(start, end):
                v = x[i]
                low = min(low, v)
                high = max(high, v)
                bad += v - v  # 0 for every finite value, NaN once one is not
            if bad != 0:
                low = np.float32(np.nan)
                high = np.float32(np.nan)
            lows[b] = low
            highs[b] = high

    @_jit
    def _unpack_dequantize_blocks_kernel(packed, bits, out, offsets, scales, block):
        n = out.size
        for b in range(offsets.size):
            start = b * block
            end = min(start + block, n)
            first = start * bits // 8
            _unpack_dequantize_kernel(packed[first:first + ((end - start) * bits + 7) // 8], bits, out[start:end],
                                      offsets[b], scales[b])


def _keys(key: int) -> tuple[np.uint32, np.uint32]:
    key_lo, key_hi = split_key(key)
    return np.uint32(key_lo), np.uint32(key_hi)


def quantize_codes_cpu(x: Tensor, grid: Grid, bits: int, key: int, codes: Tensor) -> Tensor:
    """Stochastic rounding of flat float32 ``x`` onto ``grid`` into uint8 ``codes`` (one code per byte)."""
    _quantize_codes(x.numpy(), 0, x.numel(), codes.numpy(), np.float32(levels(bits)),
                    np.float32(grid.offset), np.float32(grid.inv_scale), *_keys(key))
    return codes


def quantize_pack_cpu(x: Tensor, grid: Grid, bits: int, key: int, packed: Tensor) -> Tensor:
    """One fused quantize+pack pass of flat float32 ``x`` into ``packed``."""
    _quantize_pack_kernel(x.numpy(), bits, packed.numpy(), np.float32(levels(bits)),
                          np.float32(grid.offset), np.float32(grid.inv_scale), *_keys(key))
    return packed


def block_ranges_cpu(x: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """Each block's (min, max) of flat float32 ``x``, as :func:`.blocks.block_ranges` gives them."""
    count = -(-x.numel() // block_size)
    lows, highs = torch.empty(count, dtype=torch.float32), torch.empty(count, dtype=torch.float32)
    if count:
        _block_ranges_kernel(x.numpy(), block_size, lows.numpy(), highs.numpy())
    return lows, highs


def quantize_pack_blocks_cpu(x: Tensor, grids: BlockGrids, bits: int, key: int, packed: Tensor) -> Tensor:
    """One fused quantize+pack pass of flat float32 ``x`` onto its blocks' grids."""
    _quantize_pack_blocks_kernel(x.numpy(), bits, packed.numpy(), np.float32(levels(bits)), grids.offsets.numpy(),
                                 grids.inv_scales.numpy(), grids.block_size, *_keys(key))
    return packed


def unpack_dequantize_blocks_cpu(packed: Tensor, bits: int, offsets: Tensor, scales: Tensor, block_size: int,
                                 out: Tensor) -> Tensor:
    _unpack_dequantize_blocks_kernel(packed.contiguous().numpy(), bits, out.numpy(), offsets.contiguous().numpy(),
                                     scales.contiguous().numpy(), block_size)
    return out


def unpack_dequantize_cpu(packed: Tensor, bits: int, count: int, offset: float, scale: float, out: Tensor) -> Tensor:
    _unpack_dequantize_kernel(packed.contiguous().numpy(), bits, out.numpy(), np.float32(offset), np.float32(scale))
    return out


def pack_bits_cpu(codes: Tensor, bits: int, out: Tensor) -> Tensor:
    _pack(codes.contiguous().numpy(), codes.numel(), bits, out.numpy(), 0)
    return out


def unpack_bits_cpu(packed: Tensor, bits: int, out: Tensor) -> Tensor:
    _unpack(packed.contiguous().numpy(), 0, out.numel(), bits, out.numpy())
    return out

