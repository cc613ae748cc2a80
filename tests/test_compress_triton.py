"""The Triton (CUDA) path, checked without a GPU.

- Triton's interpreter runs the kernels on CPU tensors and must match the reference bit for bit.
- The kernels must compile ahead of time for a Hopper GPU (sm_90) with FMA contraction off, so that the GPU
  rounds like the CPU paths (the PTX must not contain fma).
Neither runs the kernels on a real GPU: that is still to be done where one is available.
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


def _compile(kernel, signature: dict, bits: int):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(kernel, signature, constexprs={"BITS": bits, "GROUPS": 256})
    try:
        return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": False})
    except (ImportError, FileNotFoundError, KeyError) as missing:  # no CUDA backend or ptxas in this triton
        pytest.skip(f"triton cannot compile for CUDA here: {missing}")


def test_kernels_compile_for_a_gpu_without_fma_contraction():
    bits = 3  # one width stands for all: BITS only changes constants
    from qtd.compress import _triton_kernels as kernels

    quant = _compile(kernels._quantize_pack_kernel, {
        "x_ptr": "*fp32", "out_ptr": "*u8", "n": "i32", "nbytes": "i32", "offset": "fp32", "inv_scale": "fp32",
        "top": "fp32", "key_lo": "i64", "key_hi": "i32", "BITS": "constexpr", "GROUPS": "constexpr",
    }, bits)
    unpack = _compile(kernels._unpack_dequantize_kernel, {
        "packed_ptr": "*u8", "out_ptr": "*fp32", "n": "i32", "nbytes": "i32", "offset": "fp32", "scale": "fp32",
        "BITS": "constexpr", "GROUPS": "constexpr",
    }, bits)
    for compiled in (quant, unpack):
        assert "fma" not in compiled.asm["ptx"]
    # the noise hash runs in 32-bit unsigned arithmetic (logical shifts, wrapping multiplies)
    assert "arith.shrui" in quant.asm["ttir"] and "arith.shrsi" not in quant.asm["ttir"]
