"""The Triton (CUDA) path, checked without a GPU.

- Triton's interpreter runs the kernels on CPU tensors and must match the reference bit for bit.
- The kernels must compile ahead of time for a Hopper GPU (sm_90) with FMA contraction off, so that the GPU
  rounds like the CPU paths (the PTX must not contain fma).
- On a GPU (``pytest -m cuda``), the compiled kernels must give the CPU reference's bytes and values, and CUDA
  tensors must take the Triton path automatically. benchmarks/gpu_check.py runs these with more sizes and times
  the kernels.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]


def test_interpreted_triton_kernels_match_the_reference():
    script = Path(__file__).with_name("triton_interpreter_check.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def _compile(kernel, signature: dict, bits: int, blocked: bool):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(kernel, signature, constexprs={"BITS": bits, "GROUPS": 256, "BLOCKED": blocked})
    try:
        return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": False})
    except (ImportError, FileNotFoundError, KeyError) as missing:  # no CUDA backend or ptxas in this triton
        pytest.skip(f"triton cannot compile for CUDA here: {missing}")


@pytest.mark.parametrize("blocked", [False, True], ids=["one-grid", "block-wise"])
def test_kernels_compile_for_a_gpu_without_fma_contraction(blocked):
    bits = 3  # one width stands for all: BITS only changes constants
    from qtd.compress import _triton_kernels as kernels

    per_block = {"block": "i32", "BITS": "constexpr", "GROUPS": "constexpr", "BLOCKED": "constexpr"}
    quant = _compile(kernels._quantize_pack_kernel, {
        "x_ptr": "*fp32", "out_ptr": "*u8", "n": "i32", "nbytes": "i32", "offset": "fp32", "inv_scale": "fp32",
        "top": "fp32", "key_lo": "i64", "key_hi": "i32", "offsets_ptr": "*fp32", "inv_scales_ptr": "*fp32",
        **per_block,
    }, bits, blocked)
    unpack = _compile(kernels._unpack_dequantize_kernel, {
        "packed_ptr": "*u8", "out_ptr": "*fp32", "n": "i32", "nbytes": "i32", "offset": "fp32", "scale": "fp32",
        "offsets_ptr": "*fp32", "scales_ptr": "*fp32", **per_block,
    }, bits, blocked)
    for compiled in (quant, unpack):
        assert "fma" not in compiled.asm["ptx"]
    # the noise hash runs in 32-bit unsigned arithmetic (logical shifts, wrapping multiplies)
    assert "arith.shrui" in quant.asm["ttir"] and "arith.shrsi" not in quant.asm["ttir"]


@pytest.mark.cuda
@pytest.mark.parametrize("bits", range(1, 9))
def test_on_a_gpu_the_compiled_kernels_give_the_cpu_reference_bytes(bits):
    import torch

    from qtd.compress import decode_message, encode_message, quantize, quantize_pack, select_backend, unpack_dequantize

    assert select_backend("cuda") == "triton"
    for count in (1, 9, 2047, 2049, 2 * 2048 + 13, 1_000_003):  # odd tails, one and several 2048-element programs
        g = torch.Generator().manual_seed(count + bits)
        x = torch.randn(count, generator=g) * torch.rand(count, generator=g) ** 3 * 50
        key = (count << 40) | (1 << 63) | (1 << 31)  # both key halves >= 2**31
        ref, grid = quantize_pack(x, bits, key, backend="reference")
        packed, gpu_grid = quantize_pack(x.cuda(), bits, key)
        assert gpu_grid == grid and torch.equal(packed.cpu(), ref), count
        values = unpack_dequantize(ref.cuda(), bits, count, grid.offset, grid.scale)
        assert torch.equal(values.cpu(), unpack_dequantize(ref, bits, count, grid.offset, grid.scale,
                                                           backend="reference")), count
        assert torch.equal(quantize(x.cuda(), bits, key).codes.cpu(), quantize(x, bits, key, backend="reference").codes)
        message = encode_message(x.cuda(), bits, 2, 7, seed=3)
        assert message.is_cuda and torch.equal(message.cpu(), encode_message(x, bits, 2, 7, seed=3)), count
        assert torch.equal(decode_message(message)[1].cpu(), decode_message(message.cpu())[1]), count
