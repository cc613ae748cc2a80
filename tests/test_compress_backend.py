"""Path selection and the clean fallback to the reference path when a fast path is unavailable."""

import subprocess
import sys

import pytest
import torch

from qtd.compress import _numba_kernels, backend, decode_message, encode_message, quantize_pack, select_backend


def test_auto_falls_back_to_reference_without_numba(monkeypatch):
    x = torch.randn(3001)
    expected = encode_message(x, 5, sender=1, iteration=2)
    monkeypatch.setattr(_numba_kernels, "AVAILABLE", False)
    assert select_backend("cpu") == "reference"
    assert torch.equal(encode_message(x, 5, sender=1, iteration=2), expected)
    assert torch.equal(decode_message(expected)[1], decode_message(expected)[1])
    with pytest.raises(ValueError, match="numba path needs numba"):
        select_backend("cpu", "numba")


def test_disabled_numba_jit_selects_the_reference_path():
    code = "from qtd.compress import select_backend; print(select_backend('cpu'))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={**__import__("os").environ, "NUMBA_DISABLE_JIT": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reference"


def test_cuda_tensors_never_pick_the_cpu_kernels():
    assert select_backend("cuda") in ("triton", "reference")


def test_a_failing_fast_path_warns_once_and_falls_back(monkeypatch):
    x = torch.randn(1000)
    expected = encode_message(x, 3, sender=0, iteration=1)

    def broken(*args):
        raise RuntimeError("kernel does not compile here")

    monkeypatch.setattr(_numba_kernels, "quantize_pack_cpu", broken)
    monkeypatch.setattr(backend, "_FAILED", set())
    with pytest.raises(RuntimeError, match="does not compile"):
        quantize_pack(x, 3, key=1, backend="numba")  # asked for by name: no silent fallback
    with pytest.warns(RuntimeWarning, match="numba path failed"):
        assert torch.equal(encode_message(x, 3, sender=0, iteration=1), expected)
    assert select_backend("cpu") == "reference"


def test_bad_input_is_not_mistaken_for_a_kernel_failure(monkeypatch):
    monkeypatch.setattr(backend, "_FAILED", set())
    with pytest.raises(ValueError, match="non-finite"):
        encode_message(torch.tensor([float("nan"), 1.0]), 4, sender=0, iteration=0)
    assert select_backend("cpu") == ("numba" if _numba_kernels.AVAILABLE else "reference")
