import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qtd.compress import (
    ErrorFeedback,
    Sparse,
    blocksign_compress,
    blocksign_decompress,
    decode_message,
    encode_message,
    topk_compress,
    topk_decompress,
)


def test_topk_keeps_the_largest_magnitudes():
    x = torch.tensor([0.1, -5.0, 2.0, 0.0, 3.0, -0.5])
    s = topk_compress(x, 3)
    assert isinstance(s, Sparse) and s.numel == 6 and s.indices.dtype == torch.int64
    assert sorted(s.indices.tolist()) == [1, 2, 4]
    assert torch.equal(topk_decompress(s), torch.tensor([0.0, -5.0, 2.0, 0.0, 3.0, 0.0]))


def test_topk_edges_and_out_buffer():
    x = torch.randn(2, 5)
    assert torch.equal(topk_decompress(topk_compress(x, 10)), x.reshape(-1))
    assert torch.equal(topk_decompress(topk_compress(x, 0)), torch.zeros(10))
    out = torch.full((10,), 7.0)
    result = topk_decompress(topk_compress(x, 2), out=out)
    assert result.data_ptr() == out.data_ptr() and int((out != 0).sum()) == 2
    for bad in (-1, 11, 2.5):
        with pytest.raises(ValueError, match="k="):
            topk_compress(x, bad)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), steps=st.integers(1, 6), data=st.data())
def test_error_feedback_conserves_the_gradient_sum_with_topk(n, steps, data):
    k = data.draw(st.integers(0, n))
    g = torch.Generator().manual_seed(n * 31 + steps)
    grads = [torch.randn(n, dtype=torch.float64, generator=g) for _ in range(steps)]
    memory = ErrorFeedback(grads[0])
    sent_total = torch.zeros(n, dtype=torch.float64)
    for grad in grads:
        compensated = memory.compensate(grad)
        sent = topk_decompress(topk_compress(compensated, k))
        memory.update(compensated, sent)
        sent_total += sent
    torch.testing.assert_close(sent_total + memory.residual, sum(grads))
    if k == n:
        assert torch.count_nonzero(memory.residual) == 0


def test_error_feedback_works_with_the_quantizer_and_blocksign():
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(300, generator=g) for _ in range(5)]
    for compress in (
        lambda c, t: decode_message(encode_message(c, 2, sender=0, iteration=t))[1],
        lambda c, t: blocksign_decompress(*blocksign_compress(c, [100, 200]), [100, 200]),
    ):
        memory = ErrorFeedback(grads[0])
        sent_total = torch.zeros(300)
        for t, grad in enumerate(grads):
            compensated = memory.compensate(grad)
            sent = compress(compensated, t)
            memory.update(compensated, sent)
            sent_total += sent
        torch.testing.assert_close(sent_total + memory.residual, sum(grads), atol=1e-5, rtol=1e-5)


def test_error_feedback_rejects_wrong_sizes():
    memory = ErrorFeedback(torch.zeros(4))
    assert torch.equal(memory.residual, torch.zeros(4))
    with pytest.raises(ValueError, match="5 elements"):
        memory.compensate(torch.zeros(5))


def test_blocksign_round_trip():
    x = torch.tensor([1.0, -3.0, 0.0, 2.0, -4.0, 4.0, -1.0])
    packed, scales = blocksign_compress(x, [3, 4])
    assert packed.dtype == torch.uint8 and packed.numel() == 1
    torch.testing.assert_close(scales, torch.tensor([4.0 / 3, 11.0 / 4]))
    expected = torch.tensor([4 / 3, -4 / 3, 4 / 3, 11 / 4, -11 / 4, 11 / 4, -11 / 4])
    torch.testing.assert_close(blocksign_decompress(packed, scales, [3, 4]), expected)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6))
def test_blocksign_properties(sizes):
    n = sum(sizes)
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    packed, scales = blocksign_compress(x, sizes)
    assert packed.numel() == (n + 7) // 8 and scales.shape == (len(sizes),)
    y = blocksign_decompress(packed, scales, sizes)
    assert torch.equal(torch.sign(y[x != 0]), torch.sign(x[x != 0]))
    for block_x, block_y in zip(x.split(sizes), y.split(sizes), strict=True):
        # each block keeps its l1 norm
        torch.testing.assert_close(block_y.abs().sum(), block_x.abs().sum())


def test_blocksign_rejects_sizes_that_do_not_cover_the_vector():
    with pytest.raises(ValueError, match="sum to 5"):
        blocksign_compress(torch.randn(5), [2, 2])
    packed, scales = blocksign_compress(torch.randn(5), [2, 3])
    with pytest.raises(ValueError, match="2 scales for 3 blocks"):
        blocksign_decompress(packed, scales, [1, 1, 3])
