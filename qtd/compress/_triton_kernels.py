"""Fused CUDA kernels (Triton): CUDA tensors stay on the GPU, one pass over the data.

Each program handles ``GROUPS`` groups of 8 elements: it draws the counter-based noise, rounds as the
reference does (float32, same operation order), ORs the 8 codes of a group into one 64-bit word and stores its
``bits`` bytes, i.e. the layout of :mod:`.packing`. Kernels launch with ``enable_fp_fusion=False`` so that the
compiler does not contract multiply-add into FMA, which would round differently from the CPU paths.

Status: exercised on CPU through Triton's interpreter (``TRITON_INTERPRET=1``, see
tests/test_compress_triton.py), which checks the logic and the bit-exactness against the reference; NOT yet
run or timed on a real GPU. ``AVAILABLE`` is False when triton cannot be imported; CUDA tensors then take the
reference torch path.
"""

from __future__ import annotations

from torch import Tensor

try:
    import triton
    import triton.language as tl

    AVAILABLE = True
except Exception:  # ImportError, or a triton build that cannot load here
    AVAILABLE = False

from .noise import LOWBIAS_M1, LOWBIAS_M2, UNIFORM_BITS, UNIFORM_SCALE, split_key
from .blocks import BlockGrids
from .grid import Grid, levels

GROUPS = 256  # groups of 8 elements per program: 2048 elements

if AVAILABLE:
    # Triton kernels may only read globals declared constexpr.
    _M1 = tl.constexpr(LOWBIAS_M1)
    _M2 = tl.constexpr(LOWBIAS_M2)
    _NOISE_SHIFT = tl.constexpr(32 - UNIFORM_BITS)
    _UNIT = tl.constexpr(UNIFORM_SCALE)

    @triton.jit
    def _lowbias32(x):
        x = x ^ (x >> 16)
        x = x * _M1
        x = x ^ (x >> 15)
        x = x * _M2
        return x ^ (x >> 16)

    @triton.jit
    def _quantize_pack_kernel(x_ptr, out_ptr, n, nbytes, offset, inv_scale, top, key_lo, key_hi,
                              offsets_ptr, inv_scales_ptr, block, BITS: tl.constexpr, GROUPS: tl.constexpr,
                              BLOCKED: tl.constexpr):
        group = tl.program_id(0).to(tl.int64) * GROUPS + tl.arange(0, GROUPS)
        lane = tl.arange(0, 8)
        index = group[:, None] * 8 + lane[None, :]
        inside = index < n
        x = tl.load(x_ptr + index, mask=inside, other=0.0)
        if BLOCKED:  # one grid per block of ``block`` elements (a multiple of 8: a group is in one block)
            offset = tl.load(offsets_ptr + group // (block // 8), mask=group * 8 < n, other=0.0)[:, None]
            inv_scale = tl.load(inv_scales_ptr + group // (block // 8), mask=group * 8 < n, other=0.0)[:, None]
        h = _lowbias32(_lowbias32(index.to(tl.uint32) ^ key_lo.to(tl.uint32)) ^ key_hi.to(tl.uint32))
        u = (h >> _NOISE_SHIFT).to(tl.float32) * _UNIT
        t = (x - offset) * inv_scale
        down = tl.floor(t)
        code = tl.where(u < t - down, down + 1.0, down)
        code = tl.where(inside, tl.minimum(code, top), 0.0)
        fields = code.to(tl.uint32).to(tl.uint64) << (lane[None, :] * BITS).to(tl.uint64)
        word = tl.sum(fields, axis=1)  # disjoint bit fields: the sum is their OR
        byte = tl.arange(0, 8)
        value = (word[:, None] >> (byte[None, :] * 8).to(tl.uint64)) & 255
        where = group[:, None] * BITS + byte[None, :]
        tl.store(out_ptr + where, value.to(tl.uint8), mask=(byte[None, :] < BITS) & (where < nbytes))

    @triton.jit
    def _unpack_dequantize_kernel(packed_ptr, out_ptr, n, nbytes, offset, scale, offsets_ptr, scales_ptr, block,
                                  BITS: tl.constexpr, GROUPS: tl.constexpr, BLOCKED: tl.constexpr):
        group = tl.program_id(0).to(tl.int64) * GROUPS + tl.arange(0, GROUPS)
        byte = tl.arange(0, 8)
        where = group[:, None] * BITS + byte[None, :]
        stored = tl.load(packed_ptr + where, mask=(byte[None, :] < BITS) & (where < nbytes), other=0)
        word = tl.sum(stored.to(tl.uint64) << (byte[None, :] * 8).to(tl.uint64), axis=1)
        lane = tl.arange(0, 8)
        code = (word[:, None] >> (lane[None, :] * BITS).to(tl.uint64)) & ((1 << BITS) - 1)
        if BLOCKED:
            offset = tl.load(offsets_ptr + group // (block // 8), mask=group * 8 < n, other=0.0)[:, None]
            scale = tl.load(scales_ptr + group // (block // 8), mask=group * 8 < n, other=0.0)[:, None]
        value = code.to(tl.float32) * scale + offset
        index = group[:, None] * 8 + lane[None, :]
        tl.store(out_ptr + index, value, mask=index < n)


def _launch(kernel, count: int, *args, blocks: tuple[Tensor, Tensor, int] | None = None, **constexprs) -> None:
    """``blocks``: (offsets, scales or inverse scales, block size) for a block-wise message."""
    groups = (count + 7) // 8
    if groups:
        grid = (triton.cdiv(groups, GROUPS),)
        per_block = blocks if blocks is not None else (args[0], args[0], 8)  # unread placeholders when not blocked
        kernel[grid](*args, *per_block, GROUPS=GROUPS, enable_fp_fusion=False, BLOCKED=blocks is not None,
                     **constexprs)


def _quantize_into(x: Tensor, grid: Grid, bits: int, key: int, out: Tensor, width: int) -> None:
    key_lo, key_hi = split_key(key)
    _launch(_quantize_pack_kernel, x.numel(), x, out, x.numel(), out.numel(), grid.offset, grid.inv_scale,
            float(levels(bits)), key_lo, key_hi, BITS=width)


def quantize_pack_blocks_triton(x: Tensor, grids: BlockGrids, bits: int, key: int, packed: Tensor) -> Tensor:
    """One fused quantize+pack kernel over a block-wise message (the grids stay on the device)."""
    key_lo, key_hi = split_key(key)
    _launch(_quantize_pack_kernel, x.numel(), x, packed, x.numel(), packed.numel(), 0.0, 0.0, float(levels(bits)),
            key_lo, key_hi, blocks=(grids.offsets, grids.inv_scales, grids.block_size), BITS=bits)
    return packed


def unpack_dequantize_blocks_triton(packed: Tensor, bits: int, count: int, offsets: Tensor, scales: Tensor,
                                    block_size: int, out: Tensor) -> Tensor:
    _launch(_unpack_dequantize_kernel, count, packed, out, count, packed.numel(), 0.0, 0.0,
            blocks=(offsets.contiguous(), scales.contiguous(), block_size), BITS=bits)
    return out


def quantize_pack_triton(x: Tensor, grid: Grid, bits: int, key: int, packed: Tensor) -> Tensor:
    """One fused quantize+pack kernel. (The caller's grid came from one torch min/max reduction whose two
    scalars travel to the host for the header: one device sync per message.)"""
    _quantize_into(x, grid, bits, key, packed, bits)
    return packed


def quantize_codes_triton(x: Tensor, grid: Grid, bits: int, key: int, codes: Tensor) -> Tensor:
    """One code per byte: the quantize+pack kernel with 8-bit fields."""
    _quantize_into(x, grid, bits, key, codes, 8)
    return codes


def unpack_dequantize_triton(packed: Tensor, bits: int, count: int, offset: float, scale: float, out: Tensor) -> Tensor:
    _launch(_unpack_dequantize_kernel, count, packed, out, count, packed.numel(), offset, scale, BITS=bits)
    return out
