"""Parameter-server mode without processes: index packing, gradient messages, codecs, checksums, config."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from qtd.comm import ring_allgather_bytes, ring_allreduce_bytes
from qtd.compress import (GRAD_HEADER_BYTES, BlockSignCodec, Sparse, TopKCodec, blocksign_compress,
                          blocksign_decompress, decode_sign_message, decode_topk_message, encode_sign_message,
                          encode_topk_message, index_bits, pack_bits, pack_uints, sign_message_nbytes,
                          topk_compress, topk_message_nbytes, unpack_uints)
from qtd.config import PSConfig, load_config
from qtd.algorithms import ps_algorithm_name
from qtd.engine.steps.ps import _hash_weights, state_hash, topk_count
from qtd.errors import ConfigError, WireFormatError


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 56), count=st.integers(0, 70), seed=st.integers(0, 2**31))
def test_uint_packing_round_trips_at_every_width(bits, count, seed):
    g = torch.Generator().manual_seed(seed)
    values = torch.randint(0, 2**62, (count,), generator=g) & ((1 << bits) - 1)
    packed = pack_uints(values, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == (count * bits + 7) // 8
    assert torch.equal(unpack_uints(packed, bits, count), values)


def test_uint_packing_matches_the_quantizer_layout_and_rejects_bad_input():
    codes = torch.randint(0, 32, (37,), dtype=torch.uint8)
    assert torch.equal(pack_uints(codes, 5), pack_bits(codes, 5))  # same LSB-first stream as the s-bit codes
    assert pack_uints(torch.tensor([2**21 - 1, 0, 5]), 21)[-1] == 0  # unused high bits are zero
    with pytest.raises(ValueError, match="fit in 3 bits"):
        pack_uints(torch.tensor([8]), 3)
    with pytest.raises(ValueError, match="bits=0"):
        pack_uints(torch.tensor([0]), 0)
    with pytest.raises(ValueError, match="take 3 bytes"):
        unpack_uints(torch.zeros(2, dtype=torch.uint8), 8, 3)
    assert [index_bits(n) for n in (1, 2, 3, 1024, 1025, 1_199_882)] == [1, 1, 2, 10, 11, 21]


def test_topk_message_is_compact_canonical_and_exact_in_float32():
    x = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    sparse = topk_compress(x, 50)
    message = encode_topk_message(sparse, 32, sender=3, iteration=7)
    assert message.numel() == topk_message_nbytes(5000, 50, 32) == GRAD_HEADER_BYTES + 50 * 4 + (50 * 13 + 7) // 8
    header, decoded = decode_topk_message(message, expected_numel=5000, expected_sender=3, expected_iteration=7)
    assert (header.kind, header.count, header.index_bits, header.numel) == (1, 50, 13, 5000)
    assert torch.equal(decoded.indices, sparse.indices.sort().values)
    dense = torch.zeros(5000).index_copy_(0, decoded.indices, decoded.values)
    assert torch.equal(dense, torch.zeros(5000).index_copy_(0, sparse.indices, sparse.values))
    shuffled = torch.randperm(50)  # the order TopK returns does not change the bytes
    again = Sparse(sparse.values[shuffled], sparse.indices[shuffled], 5000)
    assert torch.equal(encode_topk_message(again, 32, 3, 7), message)


def test_topk_message_in_float16_rounds_values_and_refuses_overflow():
    sparse = Sparse(torch.tensor([0.1, -3.3333]), torch.tensor([4, 9]), 10)
    message = encode_topk_message(sparse, 16, 0, 0)
    assert message.numel() == GRAD_HEADER_BYTES + 2 * 2 + 1
    _, decoded = decode_topk_message(message)
    assert torch.equal(decoded.values, sparse.values.half().float())
    with pytest.raises(ValueError, match="ps.value_bits=32"):
        encode_topk_message(Sparse(torch.tensor([1e6]), torch.tensor([0]), 10), 16, 0, 0)


def _corrupt(message, offset, value):
    bad = message.clone()
    bad[offset] = value
    return bad


def test_malformed_gradient_messages_are_rejected_with_a_reason():
    message = encode_topk_message(Sparse(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1, 5, 9]), 100), 32, 2, 4)
    with pytest.raises(WireFormatError, match="magic"):
        decode_topk_message(_corrupt(message, 0, 0))
    with pytest.raises(WireFormatError, match="checksum"):
        decode_topk_message(_corrupt(message, 9, 1))
    with pytest.raises(WireFormatError, match="truncated"):
        decode_topk_message(message[:-1])
    with pytest.raises(WireFormatError, match="numel=100 \\(expected 99\\)"):
        decode_topk_message(message, expected_numel=99)
    with pytest.raises(WireFormatError, match="sender=2 \\(expected 1\\)"):
        decode_topk_message(message, expected_sender=1)
    with pytest.raises(WireFormatError, match="kind=1 \\(expected 2\\)"):
        decode_sign_message(message)
    duplicates = encode_topk_message(Sparse(torch.tensor([1.0, 2.0]), torch.tensor([5, 5]), 100), 32, 0, 0)
    with pytest.raises(WireFormatError, match="strictly increasing"):
        decode_topk_message(duplicates)
    beyond = encode_topk_message(Sparse(torch.tensor([1.0]), torch.tensor([120]), 100), 32, 0, 0)  # 7 bits fit 120
    with pytest.raises(WireFormatError, match="below numel=100"):
        decode_topk_message(beyond)


def test_sign_message_round_trips_blocksign():
    x = torch.randn(1001)
    blocks = [1, 500, 0, 500]
    packed, scales = blocksign_compress(x, blocks)
    message = encode_sign_message(packed, scales, 1001, sender=1, iteration=2)
    assert message.numel() == sign_message_nbytes(1001, 4) == GRAD_HEADER_BYTES + 16 + 126
    header, got_packed, got_scales = decode_sign_message(message, expected_numel=1001, expected_count=4)
    assert torch.equal(got_packed, packed) and torch.equal(got_scales, scales)
    negative = encode_sign_message(packed, -scales - 1, 1001, 1, 2)
    with pytest.raises(WireFormatError, match="non-negative"):
        decode_sign_message(negative)


@settings(max_examples=25, deadline=None)
@given(numel=st.integers(1, 300), steps=st.integers(1, 6), ratio=st.floats(0.01, 1.0),
       value_bits=st.sampled_from([16, 32]))
def test_topk_codec_error_feedback_invariant(numel, steps, ratio, value_bits):
    g = torch.Generator().manual_seed(numel * 7 + steps)
    grads = [torch.randn(numel, generator=g) for _ in range(steps)]
    codec = TopKCodec(grads[0], topk_count(ratio, numel), value_bits, error_feedback=True)
    sent = torch.zeros(numel, dtype=torch.float64)
    for t, grad in enumerate(grads):
        message = codec.encode(grad, sender=0, iteration=t)
        assert message.numel() == codec.message_nbytes
        sent += codec.decode(message).double()
    assert_close(sent + codec.residual.double(), sum(gr.double() for gr in grads), rtol=1e-5, atol=1e-5)


def test_codec_with_k_equal_numel_is_lossless_and_without_feedback_keeps_no_residual():
    grad = torch.randn(64)
    full = TopKCodec(grad, 64, 32, error_feedback=True)
    assert torch.equal(full.decode(full.encode(grad, 0, 0)), grad)
    assert torch.count_nonzero(full.residual) == 0
    plain = TopKCodec(grad, 3, 32, error_feedback=False)
    assert plain.residual is None and plain.state_dict() == {}
    assert int((plain.decode(plain.encode(grad, 0, 0)) != 0).sum()) == 3


def test_blocksign_codec_decodes_exactly_like_blocksign_decompress_and_feeds_back():
    g = torch.Generator().manual_seed(5)
    grads = [torch.randn(77, generator=g) for _ in range(4)]
    blocks = [7, 0, 50, 20]
    codec = BlockSignCodec(grads[0], blocks, error_feedback=True)
    total = torch.randn(77, generator=g)
    sent = torch.zeros(77, dtype=torch.float64)
    for t, grad in enumerate(grads):
        compensated = grad + codec.residual
        message = codec.encode(grad, 0, t)
        expected = blocksign_decompress(*blocksign_compress(compensated, blocks), blocks)
        assert torch.equal(codec.decode(message), expected)
        before = total.clone()
        codec.decode_add(message, total)
        assert torch.equal(total, before + expected)
        sent += expected.double()
    assert_close(sent + codec.residual.double(), sum(gr.double() for gr in grads), rtol=1e-5, atol=1e-5)
    restored = BlockSignCodec(grads[0], blocks)
    restored.load_state_dict(codec.state_dict())
    assert torch.equal(restored.residual, codec.residual)


def test_state_hash_is_order_free_and_sees_one_ulp():
    x = torch.randn(10_000)
    w = _hash_weights(x.numel(), x.device)
    h = state_hash(x, w)
    assert torch.equal(h, (x.view(torch.int32).long() * w).flip(0).cumsum(0)[-1])  # other summation order
    y = x.clone()
    y[1234] = torch.nextafter(y[1234], torch.tensor(float("inf")))
    assert not torch.equal(state_hash(y, w), h)
    z = x.clone()
    z[[3, 4]] = z[[4, 3]]  # positions matter
    assert not torch.equal(state_hash(z, w), h) or x[3] == x[4]


def test_traffic_formulas_and_names():
    assert ring_allgather_bytes(100, 8) == 700 and ring_allgather_bytes(100, 1) == 0
    assert ring_allreduce_bytes(800, 8) == 1400
    assert topk_count(0.01, 1_199_882) == 11999 and topk_count(1e-9, 10) == 1 and topk_count(1.0, 10) == 10
    assert ps_algorithm_name("none", True) == "amsgrad_dense"
    assert ps_algorithm_name("topk", False) == "amsgrad_topk"
    assert ps_algorithm_name("blocksign", True) == "amsgrad_blocksign_ef"


@pytest.mark.parametrize("override, message", [
    ("ps.value_bits=8", "ps.value_bits=8 is not allowed: use 32 (float32 values) or 16 (float16 values)"),
    ("ps.batch_size=0", "ps.batch_size=0 is not allowed: must be > 0"),
    ("ps.compressor=signum", "ps.compressor='signum' is not allowed: choose one of none, topk, blocksign"),
    ("ps.k_ratio=0", "ps.k_ratio=0.0 is not allowed: must be in (0, 1]"),
])
def test_ps_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config("configs/ps_digits.yaml", [override])
    assert str(info.value) == message


def test_shipped_ps_configs_load():
    config = load_config("configs/ps_digits.yaml")
    assert config.mode == "ps" and config.model.name == "comp_ams_cnn" and config.ps.compressor == "topk"
    mnist = load_config("configs/ps_mnist.yaml")
    assert mnist.topology.nodes == 8 and mnist.data.name == "mnist_idx"


def test_link_emulation_is_refused_in_ps_mode():
    with pytest.raises(ConfigError, match="emulation.links=True is not allowed: link emulation is not available"):
        load_config("configs/ps_digits.yaml", ["emulation.links=true"])
