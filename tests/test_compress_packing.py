import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qtd.compress import pack_bits, packed_nbytes, unpack_bits
from qtd.errors import ConfigError

LENGTHS = [0, 1, 2, 7, 8, 9, 15, 16, 17, 1001]


def _random_codes(count: int, bits: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 1 << bits, (count,), generator=g, dtype=torch.int64).to(torch.uint8)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", LENGTHS)
def test_round_trip_and_size(bits, count):
    codes = _random_codes(count, bits, seed=count)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == (count * bits + 7) // 8 == packed_nbytes(count, bits)
    assert torch.equal(unpack_bits(packed, bits, count), codes)


def _python_pack(codes: list[int], bits: int) -> list[int]:
    """The documented layout, one stream bit at a time: code i at bits i*s.., least significant bit first."""
    stream = [0] * ((len(codes) * bits + 7) // 8)
    for i, code in enumerate(codes):
        for b in range(bits):
            if code >> b & 1:
                j = i * bits + b
                stream[j // 8] |= 1 << (j % 8)
    return stream


@pytest.mark.parametrize("bits", range(1, 9))
def test_layout_matches_the_documented_bit_order(bits):
    codes = _random_codes(37, bits, seed=bits)
    assert pack_bits(codes, bits).tolist() == _python_pack(codes.tolist(), bits)


def test_known_bytes():
    assert pack_bits(torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1], dtype=torch.uint8), 1).tolist() == [0b1101, 1]
    assert pack_bits(torch.tensor([0x3, 0x1, 0x2], dtype=torch.uint8), 2).tolist() == [0b100111]
    assert pack_bits(torch.tensor([5, 6, 7], dtype=torch.uint8), 3).tolist() == [0b11110101, 0b1]
    assert pack_bits(torch.tensor([0xA, 0xB, 0xC], dtype=torch.uint8), 4).tolist() == [0xBA, 0x0C]


def test_padding_bits_are_zero_and_high_code_bits_ignored():
    codes = torch.tensor([0xFF] * 5, dtype=torch.uint8)
    assert pack_bits(codes, 3).tolist() == _python_pack([7] * 5, 3)


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 8), data=st.data())
def test_round_trip_property(bits, data):
    codes = data.draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=200))
    tensor = torch.tensor(codes, dtype=torch.uint8)
    packed = pack_bits(tensor, bits)
    assert packed.tolist() == _python_pack(codes, bits)
    assert unpack_bits(packed, bits, len(codes)).tolist() == codes


def test_bad_arguments():
    with pytest.raises(ConfigError):
        pack_bits(torch.zeros(4, dtype=torch.uint8), 9)
    with pytest.raises(TypeError, match="uint8"):
        pack_bits(torch.zeros(4, dtype=torch.int32), 2)
    with pytest.raises(ValueError, match="take 2 bytes"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 4, 4)
