import struct
import zlib

import pytest
import torch

from qtd.compress import (
    HEADER_BYTES,
    Header,
    decode_message,
    encode_message,
    message_nbytes,
    noise_key,
    quantize,
    dequantize,
    read_header,
)
from qtd.errors import ConfigError, WireFormatError

ALL_BITS = list(range(1, 9)) + [16, 32]


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("count", [0, 1, 7, 1001])
def test_size_is_header_plus_payload_exactly(bits, count):
    per = {16: 2 * count, 32: 4 * count}.get(bits, (count * bits + 7) // 8)
    assert message_nbytes(count, bits) == HEADER_BYTES + per
    message = encode_message(torch.randn(count), bits, sender=1, iteration=2)
    assert message.dtype == torch.uint8 and message.dim() == 1 and message.numel() == HEADER_BYTES + per


def test_header_is_fixed_and_small():
    assert HEADER_BYTES == 40


@pytest.mark.parametrize("bits", ALL_BITS)
def test_round_trip_and_header_fields(bits):
    x = torch.randn(4, 251)
    message = encode_message(x, bits, sender=3, iteration=77, seed=9)
    header, values = decode_message(message, expected_bits=bits, expected_count=x.numel(),
                                    expected_sender=3, expected_iteration=77)
    assert (header.version, header.bits, header.count, header.sender, header.iteration) == (1, bits, 1004, 3, 77)
    assert header == read_header(message)
    assert values.dtype == torch.float32 and values.shape == (1004,)
    flat = x.reshape(-1)
    if bits == 32:
        assert torch.equal(values, flat)
    elif bits == 16:
        assert torch.equal(values, flat.half().float())
    else:
        # identical to the reference quantizer with the message's key, and within one grid step of x
        q = quantize(flat, bits, noise_key(9, 3, 77))
        assert (header.offset, header.scale) == (q.offset, q.scale)
        assert torch.equal(values, dequantize(q))
        assert ((values - flat).abs() <= header.scale * (1 + 1e-6)).all()


def test_encoding_is_reproducible_and_keyed_by_sender_iteration_and_seed():
    x = torch.randn(500)
    base = encode_message(x, 3, sender=1, iteration=5, seed=0)
    assert torch.equal(base, encode_message(x, 3, sender=1, iteration=5, seed=0))
    for other in [dict(sender=2, iteration=5, seed=0), dict(sender=1, iteration=6, seed=0),
                  dict(sender=1, iteration=5, seed=1)]:
        assert not torch.equal(base[HEADER_BYTES:], encode_message(x, 3, **other)[HEADER_BYTES:])


@pytest.mark.parametrize("bits", [2, 16, 32])
def test_preallocated_buffers_are_written_in_place(bits):
    x = torch.randn(999)
    buffer = torch.full((message_nbytes(999, bits),), 0xAB, dtype=torch.uint8)
    message = encode_message(x, bits, sender=0, iteration=1, out=buffer)
    assert message.data_ptr() == buffer.data_ptr()
    assert torch.equal(message, encode_message(x, bits, sender=0, iteration=1))
    values = torch.empty(999)
    _, decoded = decode_message(message, out=values)
    assert decoded.data_ptr() == values.data_ptr()
    assert torch.equal(values, decode_message(message)[1])
    with pytest.raises(ValueError, match="message_nbytes"):
        encode_message(x, bits, sender=0, iteration=1, out=torch.empty(10, dtype=torch.uint8))
    with pytest.raises(ValueError, match="999 elements"):
        decode_message(message, out=torch.empty(998))


def test_decoded_values_do_not_alias_the_receive_buffer():
    x = torch.randn(16)
    message = encode_message(x, 32, sender=0, iteration=0)
    _, values = decode_message(message)
    message.zero_()
    assert torch.equal(values, x)


def _reseal(message: torch.Tensor) -> torch.Tensor:
    """Recompute the header checksum after tampering, to reach the checks behind it."""
    body = bytes(message[: HEADER_BYTES - 4].tolist())
    message[HEADER_BYTES - 4:HEADER_BYTES] = torch.tensor(list(struct.pack("<I", zlib.crc32(body))), dtype=torch.uint8)
    return message


def _tampered(offset: int, fmt: str, value, reseal: bool = True) -> torch.Tensor:
    message = encode_message(torch.randn(100), 4, sender=2, iteration=8)
    message[offset:offset + struct.calcsize(fmt)] = torch.tensor(list(struct.pack(fmt, value)), dtype=torch.uint8)
    return _reseal(message) if reseal else message


@pytest.mark.parametrize("make, pattern", [
    (lambda: _tampered(0, "<4s", b"XXXX"), "not a qtd message: magic"),
    (lambda: _tampered(4, "<B", 3), "unsupported wire format version 3: this qtd reads versions 1 and 2"),
    (lambda: _tampered(4, "<B", 2), "reserved header fields"),  # a one-grid header read as block-wise
    (lambda: _tampered(8, "<Q", 101, reseal=False), "checksum"),
    (lambda: _tampered(5, "<B", 9), "bits=9"),
    (lambda: _tampered(5, "<B", 0), "bits=0"),
    (lambda: _tampered(6, "<H", 1), "reserved"),
    (lambda: _tampered(8, "<Q", 101), "truncated message: 90 bytes, but count=101 at bits=4 needs 91"),
    (lambda: _tampered(8, "<Q", 97), "oversized message: 90 bytes, but count=97"),
    (lambda: _tampered(5, "<B", 8), "truncated"),
    (lambda: _tampered(32, "<f", float("nan")), "grid"),
    (lambda: _tampered(32, "<f", -1.0), "grid"),
    (lambda: encode_message(torch.randn(100), 4, sender=2, iteration=8)[:-1], "truncated message: 89 bytes"),
    (lambda: encode_message(torch.randn(100), 4, sender=2, iteration=8)[:39], "shorter than the 40-byte header"),
    (lambda: torch.zeros(0, dtype=torch.uint8), "shorter than the 40-byte header"),
    (lambda: encode_message(torch.randn(100), 4, sender=2, iteration=8).to(torch.int16), "1-D uint8"),
    (lambda: encode_message(torch.randn(100), 4, sender=2, iteration=8).view(2, -1), "1-D uint8"),
])
def test_malformed_messages_are_rejected(make, pattern):
    message = make()
    with pytest.raises(WireFormatError, match=pattern):
        decode_message(message)


def test_unquantized_message_with_a_grid_is_rejected():
    message = encode_message(torch.randn(10), 32, sender=0, iteration=0)
    message[28:32] = torch.tensor(list(struct.pack("<f", 1.0)), dtype=torch.uint8)
    with pytest.raises(WireFormatError, match="grid"):
        read_header(_reseal(message))


@pytest.mark.parametrize("expectation, pattern", [
    (dict(expected_bits=2), r"bits=4 \(expected 2\)"),
    (dict(expected_count=99), r"count=100 \(expected 99\)"),
    (dict(expected_sender=1), r"sender=2 \(expected 1\)"),
    (dict(expected_iteration=9), r"iteration=8 \(expected 9\)"),
    (dict(expected_sender=1, expected_iteration=7), r"sender=2 \(expected 1\), iteration=8 \(expected 7\)"),
])
def test_mismatched_messages_name_what_differs(expectation, pattern):
    message = encode_message(torch.randn(100), 4, sender=2, iteration=8)
    with pytest.raises(WireFormatError, match=pattern):
        decode_message(message, **expectation)


def test_bad_encode_arguments():
    with pytest.raises(ConfigError, match="bits=9"):
        encode_message(torch.randn(4), 9, sender=0, iteration=0)
    with pytest.raises(ConfigError):
        message_nbytes(4, 12)
    with pytest.raises(ValueError, match="sender"):
        encode_message(torch.randn(4), 4, sender=-1, iteration=0)
    with pytest.raises(ValueError, match="float16"):
        encode_message(torch.tensor([1e5]), 16, sender=0, iteration=0)
    with pytest.raises(ValueError, match="non-finite"):
        encode_message(torch.tensor([1.0, float("nan")]), 4, sender=0, iteration=0)


def test_header_dataclass_is_frozen():
    header = read_header(encode_message(torch.randn(3), 8, sender=0, iteration=0))
    assert isinstance(header, Header)
    with pytest.raises(AttributeError):
        header.bits = 2  # type: ignore[misc]


def test_non_float32_inputs_are_encoded_as_float32():
    x = torch.randn(64, dtype=torch.float64)
    _, values = decode_message(encode_message(x, 32, sender=0, iteration=0))
    assert torch.equal(values, x.float())
    _, values = decode_message(encode_message(x.half(), 16, sender=0, iteration=0))
    assert torch.equal(values, x.half().float())


@pytest.mark.parametrize("bits", [3, 16, 32])
def test_messages_inside_a_larger_misaligned_buffer(bits):
    x = torch.randn(33)
    nbytes = message_nbytes(33, bits)
    arena = torch.zeros(nbytes + 3, dtype=torch.uint8)
    message = encode_message(x, bits, sender=1, iteration=1, out=arena[3:])
    assert torch.equal(message, encode_message(x, bits, sender=1, iteration=1))
    assert torch.equal(decode_message(arena[3:])[1], decode_message(encode_message(x, bits, 1, 1))[1])
