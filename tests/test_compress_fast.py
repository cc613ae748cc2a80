"""The fused fast paths must reproduce the reference path bit for bit (same key -> same bytes and values)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qtd.compress import (
    decode_message,
    encode_message,
    noise_key,
    pack_bits,
    quantize,
    quantize_pack,
    select_backend,
    unpack_bits,
    unpack_dequantize,
)

from tests.compress_helpers import requires_numba

pytestmark = requires_numba()

SIZES = [0, 1, 7, 8, 9, 4095, 4096, 4097, 3 * 4096 + 5, 20_011]


def _data(count: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(count, generator=g) * torch.rand(count, generator=g) ** 4 * 100  # heavy tails
    if count > 3:
        x[count // 2] = 1e6
    return x


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", SIZES)
def test_quantize_pack_and_unpack_dequantize_match_the_reference(bits, count):
    x = _data(count, seed=count + bits)
    key = noise_key(3, bits, count)
    ref_packed, ref_grid = quantize_pack(x, bits, key, backend="reference")
    fast_packed, fast_grid = quantize_pack(x, bits, key, backend="numba")
    assert fast_grid == ref_grid
    assert torch.equal(fast_packed, ref_packed)
    args = (bits, count, ref_grid.offset, ref_grid.scale)
    ref_values = unpack_dequantize(ref_packed, *args, backend="reference")
    assert torch.equal(unpack_dequantize(ref_packed, *args, backend="numba"), ref_values)


@pytest.mark.parametrize("bits", range(1, 9))
def test_quantize_and_packing_match_the_reference(bits):
    x = _data(5003, seed=bits)
    fast, ref = quantize(x, bits, 17, backend="numba"), quantize(x, bits, 17, backend="reference")
    assert torch.equal(fast.codes, ref.codes) and (fast.offset, fast.scale) == (ref.offset, ref.scale)
    codes = torch.randint(0, 256, (5003,), dtype=torch.uint8)  # high bits set: both paths must mask them
    packed = pack_bits(codes, bits, backend="reference")
    assert torch.equal(pack_bits(codes, bits, backend="numba"), packed)
    unpacked = unpack_bits(packed, bits, 5003, backend="reference")
    assert torch.equal(unpack_bits(packed, bits, 5003, backend="numba"), unpacked)


@settings(max_examples=80, deadline=None)
@given(
    bits=st.integers(1, 8),
    values=st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), max_size=70),
    key=st.integers(0, 2**64 - 1),
)
def test_fast_and_reference_agree_on_arbitrary_inputs(bits, values, key):
    x = torch.tensor(values, dtype=torch.float32)
    try:
        ref_packed, grid = quantize_pack(x, bits, key, backend="reference")
    except ValueError:  # a range that overflows float32 at this width: both paths must refuse it
        with pytest.raises(ValueError):
            quantize_pack(x, bits, key, backend="numba")
        return
    fast_packed, fast_grid = quantize_pack(x, bits, key, backend="numba")
    assert fast_grid == grid and torch.equal(fast_packed, ref_packed)
    args = (bits, x.numel(), grid.offset, grid.scale)
    assert torch.equal(unpack_dequantize(fast_packed, *args, backend="numba"),
                       unpack_dequantize(fast_packed, *args, backend="reference"))


def test_messages_use_the_fast_path_on_cpu_automatically(monkeypatch):
    assert select_backend(torch.device("cpu")) == "numba"
    x = _data(10_000, seed=1)
    fast = encode_message(x, 3, sender=4, iteration=9)
    monkeypatch.setenv("QTD_COMPRESS_BACKEND", "reference")
    assert select_backend(torch.device("cpu")) == "reference"
    assert torch.equal(encode_message(x, 3, sender=4, iteration=9), fast)
    ref_values = decode_message(fast)[1]
    monkeypatch.delenv("QTD_COMPRESS_BACKEND")
    assert torch.equal(decode_message(fast)[1], ref_values)


def test_unavailable_or_unknown_backends_are_clear_errors(monkeypatch):
    with pytest.raises(ValueError, match="triton path needs"):
        select_backend(torch.device("cpu"), "triton")
    with pytest.raises(ValueError, match="choose one of"):
        select_backend(torch.device("cpu"), "fortran")
    monkeypatch.setenv("QTD_COMPRESS_BACKEND", "fortran")
    with pytest.raises(ValueError, match="QTD_COMPRESS_BACKEND"):
        select_backend(torch.device("cpu"))
