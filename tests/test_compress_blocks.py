"""Block-wise grids (compression.block_size): every block of B elements has its own offset and scale, in a
version-2 wire message of exactly 40 + 8 * ceil(p / B) + ceil(p * s / 8) bytes."""

import math
import struct

import pytest
import torch

from qtd.compress import decode_message, encode_message, message_nbytes, noise_key, read_header
from qtd.compress.blocks import block_grids
from qtd.compress.fused import quantize_pack_blocks, unpack_dequantize_blocks
from qtd.compress.grid import dequantize_codes, grid_from_range
from qtd.compress.header import HeaderLayout
from qtd.compress.quantizer import quantize_with_grid
from qtd.compress.wire import HEADER_FORMAT, MAGIC
from qtd.errors import ConfigError, WireFormatError
from tests.compress_helpers import requires_numba


def _layered(count: int, seed: int = 0) -> torch.Tensor:
    """Values whose scale changes along the vector, as a deep net's layers do (1e-3 .. 10)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(count, generator=g) * torch.logspace(-3, 1, count)


@pytest.mark.parametrize("count, block", [(1, 8), (100, 8), (1000, 64), (1003, 256), (4096, 4096), (50, 64)])
def test_size_is_header_plus_one_grid_per_block_plus_the_codes(count, block):
    for bits in range(1, 9):
        expected = 40 + 8 * math.ceil(count / block) + math.ceil(count * bits / 8)
        assert message_nbytes(count, bits, block) == expected
        assert encode_message(_layered(count), bits, sender=1, iteration=2, block_size=block).numel() == expected


def test_every_blocks_grid_is_the_one_grid_of_its_own_elements():
    x = _layered(2003)
    x[64:128] = 0.25  # a constant block: scale 0
    x[128:192] = 1.0 + torch.arange(64) * 1e-38  # a subnormal range
    for bits in (1, 3, 8):
        grids = block_grids(x, bits, 64)
        for b in range(grids.offsets.numel()):
            block = x[64 * b:64 * (b + 1)]
            grid = grid_from_range(block.min().item(), block.max().item(), bits)
            assert (grids.offsets[b].item(), grids.scales[b].item(), grids.inv_scales[b].item()) == \
                (grid.offset, grid.scale, grid.inv_scale), (bits, b)


@pytest.mark.parametrize("bits", range(1, 9))
def test_each_block_decodes_as_a_one_grid_quantization_of_its_elements(bits):
    x, block, key = _layered(1000), 96, noise_key(3, 1, 7)
    message = encode_message(x, bits, sender=1, iteration=7, seed=3, block_size=block)
    header, values = decode_message(message, expected_block_size=block)
    assert (header.version, header.bits, header.count, header.block_size) == (2, bits, 1000, block)
    for start in range(0, 1000, block):
        part = x[start:start + block]
        grid = grid_from_range(part.min().item(), part.max().item(), bits)
        codes = quantize_with_grid(part, grid, bits, key, start=start)  # the stream of the whole message
        assert torch.equal(values[start:start + block], dequantize_codes(codes, grid.offset, grid.scale))
        assert (values[start:start + block] - part).abs().max() <= grid.scale  # within one step of its block


def test_a_block_as_large_as_the_message_gives_the_one_grid_messages_values():
    x = _layered(500)
    blocked = decode_message(encode_message(x, 3, 0, 5, seed=2, block_size=512))[1]
    assert torch.equal(blocked, decode_message(encode_message(x, 3, 0, 5, seed=2))[1])


@requires_numba()
def test_the_fused_kernels_match_the_reference_bit_for_bit():
    backend = "numba"
    for count in (0, 1, 9, 4095, 4096 * 3 + 13):
        x = _layered(count, seed=count)
        for bits in range(1, 9):
            for block in (8, 24, 256, 8192):
                key = noise_key(5, bits, count) | (1 << 63) | (1 << 31)
                ref, grids = quantize_pack_blocks(x, bits, key, block, backend="reference")
                fast, _ = quantize_pack_blocks(x, bits, key, block, backend=backend)
                assert torch.equal(fast, ref), (count, bits, block)
                args = (ref, bits, count, grids.offsets, grids.scales, block)
                assert torch.equal(unpack_dequantize_blocks(*args, backend=backend),
                                   unpack_dequantize_blocks(*args, backend="reference")), (count, bits, block)


@requires_numba()
def test_the_one_pass_block_ranges_are_torchs_and_a_non_finite_value_is_refused_on_both_paths():
    from qtd.compress._numba_kernels import block_ranges_cpu
    from qtd.compress.blocks import block_ranges

    for count, block in ((1, 8), (1003, 256), (4096, 64), (10_001, 8192)):
        x = _layered(count, seed=count)
        for mine, torchs in zip(block_ranges_cpu(x, block), block_ranges(x, block)):
            assert torch.equal(mine, torchs), (count, block)
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = _layered(1000)
        x[517] = bad
        for backend in ("numba", "reference"):
            with pytest.raises(ValueError, match="non-finite"):
                quantize_pack_blocks(x, 4, 7, 256, backend=backend)


def test_block_wise_quantization_is_unbiased():
    x, block, bits, draws = _layered(256), 32, 2, 4000
    total = torch.zeros(256, dtype=torch.float64)
    for t in range(draws):
        total += decode_message(encode_message(x, bits, sender=0, iteration=t, block_size=block))[1].double()
    scales = block_grids(x, bits, block).scales.repeat_interleave(block).double()
    # each draw is within one grid step of x with mean x: the mean of the draws is within 5 standard errors
    assert ((total / draws - x.double()).abs() <= 5 * scales / (2 * math.sqrt(draws)) + 1e-12).all()


def test_blocks_cut_the_rounding_error_of_a_vector_with_layers_of_different_scales():
    x = _layered(20_000)
    error = {block: float(sum(((decode_message(encode_message(x, 4, 0, t, block_size=block))[1] - x) ** 2).mean()
                              for t in range(5)))
             for block in (0, 256)}
    assert error[256] < error[0] / 10, error


def test_a_reader_of_version_1_only_refuses_a_block_wise_message_clearly():
    message = encode_message(_layered(100), 4, sender=2, iteration=8, block_size=32)
    old_reader = HeaderLayout("message", HEADER_FORMAT, MAGIC, 1, "node")  # what qtd before block-wise grids read
    with pytest.raises(WireFormatError, match="unsupported wire format version 2: this qtd reads version 1; "
                                              "run the same qtd version on every node"):
        old_reader.unpack(message)
    assert read_header(message).block_size == 32  # this one reads it


def _resealed(message: torch.Tensor) -> torch.Tensor:
    import zlib
    body = bytes(message[:36].tolist())
    message[36:40] = torch.tensor(list(struct.pack("<I", zlib.crc32(body))), dtype=torch.uint8)
    return message


def _tampered(offset: int, fmt: str, value) -> torch.Tensor:
    message = encode_message(_layered(100), 4, sender=2, iteration=8, block_size=32)  # 4 blocks: 32 grid bytes
    message[offset:offset + struct.calcsize(fmt)] = torch.tensor(list(struct.pack(fmt, value)), dtype=torch.uint8)
    return _resealed(message) if offset < 36 else message


@pytest.mark.parametrize("make, pattern", [
    (lambda: _tampered(28, "<I", 12), "block_size=12 is not a positive multiple of 8"),
    (lambda: _tampered(28, "<I", 0), "block_size=0"),
    (lambda: _tampered(28, "<I", 16), "truncated message: 122 bytes, but count=100 at bits=4 in blocks of 16 needs 146"),
    (lambda: _tampered(32, "<I", 1), "reserved header fields"),
    (lambda: _tampered(5, "<B", 16), "bits in 1..8"),
    (lambda: _tampered(40, "<f", float("nan")), "non-finite or negative"),
    (lambda: _tampered(40 + 16, "<f", -1.0), "non-finite or negative"),
    (lambda: _tampered(40 + 28, "<f", float("inf")), "non-finite or negative"),
    (lambda: encode_message(_layered(100), 4, 2, 8, block_size=32)[:-1], "truncated message: 121 bytes"),
])
def test_malformed_block_wise_messages_are_rejected(make, pattern):
    with pytest.raises(WireFormatError, match=pattern):
        decode_message(make())


def test_a_message_with_other_blocks_than_expected_names_the_difference():
    message = encode_message(_layered(100), 4, sender=2, iteration=8, block_size=32)
    with pytest.raises(WireFormatError, match=r"block_size=32 \(expected 64\)"):
        decode_message(message, expected_block_size=64)
    with pytest.raises(WireFormatError, match=r"block_size=0 \(expected 32\)"):
        decode_message(encode_message(_layered(100), 4, 2, 8), expected_block_size=32)


@pytest.mark.parametrize("bits, block, error", [(16, 64, ConfigError), (32, 8, ConfigError), (4, 12, ValueError),
                                                (4, -8, ValueError)])
def test_bad_block_sizes_are_refused(bits, block, error):
    with pytest.raises(error, match="block_size"):
        encode_message(_layered(10), bits, 0, 0, block_size=block)
