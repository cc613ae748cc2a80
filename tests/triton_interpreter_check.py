"""Run the Triton kernels on CPU tensors through Triton's interpreter and compare them with the reference.

Started by tests/test_compress_triton.py in a subprocess, because TRITON_INTERPRET must be set before the
kernels are defined. Prints one line per failure and exits non-zero if there is any.
"""

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from qtd.compress import noise_key, quantize, quantize_pack, unpack_dequantize  # noqa: E402
from qtd.compress.fused import quantize_pack_blocks, unpack_dequantize_blocks  # noqa: E402
from qtd.compress import _triton_kernels as kernels  # noqa: E402

SIZES = [0, 1, 9, 2048, 2 * 2048 + 13]
BLOCKS = [8, 24, 256, 4096]  # block sizes: smaller than a program, not a power of two, as large as a message


def _blocked(x: torch.Tensor, bits: int, key: int, block: int) -> list[str]:
    """The block-wise kernels against the reference: one grid per ``block`` elements."""
    failures, count = [], x.numel()
    ref_packed, grids = quantize_pack_blocks(x, bits, key, block, backend="reference")
    packed = torch.full_like(ref_packed, 0xEE)
    kernels.quantize_pack_blocks_triton(x, grids, bits, key, packed)
    if not torch.equal(packed, ref_packed):
        failures.append(f"quantize_pack_blocks count={count} bits={bits} block={block}")
    values = torch.full((count,), float("nan"))
    kernels.unpack_dequantize_blocks_triton(ref_packed, bits, count, grids.offsets, grids.scales, block, values)
    expected = unpack_dequantize_blocks(ref_packed, bits, count, grids.offsets, grids.scales, block,
                                        backend="reference")
    if not torch.equal(values, expected):
        failures.append(f"unpack_dequantize_blocks count={count} bits={bits} block={block}")
    return failures


def main() -> int:
    failures = []
    for count in SIZES:
        g = torch.Generator().manual_seed(count)
        x = torch.randn(count, generator=g) * torch.rand(count, generator=g) ** 3 * 50
        for bits in range(1, 9):
            key = noise_key(5, bits, count) | (1 << 63) | (1 << 31)  # key halves >= 2**31: unsigned handling
            ref_packed, grid = quantize_pack(x, bits, key, backend="reference")
            packed = torch.full_like(ref_packed, 0xEE)
            kernels.quantize_pack_triton(x, grid, bits, key, packed)
            if not torch.equal(packed, ref_packed):
                failures.append(f"quantize_pack count={count} bits={bits}")
            values = torch.full((count,), float("nan"))
            kernels.unpack_dequantize_triton(ref_packed, bits, count, grid.offset, grid.scale, values)
            expected = unpack_dequantize(ref_packed, bits, count, grid.offset, grid.scale, backend="reference")
            if not torch.equal(values, expected):
                failures.append(f"unpack_dequantize count={count} bits={bits}")
            codes = torch.full((count,), 0xEE, dtype=torch.uint8)
            kernels.quantize_codes_triton(x, grid, bits, key, codes)
            if not torch.equal(codes, quantize(x, bits, key, backend="reference").codes):
                failures.append(f"quantize codes count={count} bits={bits}")
            for block in BLOCKS:
                failures += _blocked(x, bits, key, block)
    for failure in failures:
        print("MISMATCH", failure)
    print(f"checked {len(SIZES) * 8 * (3 + 2 * len(BLOCKS))} cases, {len(failures)} mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
