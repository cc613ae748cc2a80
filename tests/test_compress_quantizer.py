import math

import pytest
import torch

from qtd.compress import dequantize, noise_key, quantize, quantize_pack, unpack_dequantize
from qtd.errors import ConfigError

from tests.compress_helpers import CPU_BACKENDS

REPEATS = 4000


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    outliers = torch.randn(48, generator=g)
    outliers[5], outliers[17] = 50.0, -200.0
    spike = torch.rand(48, generator=g)
    spike[0] = 1e4
    small = torch.randn(48, generator=g) * 1e-3 + 3.0
    return {"outliers": outliers, "spike": spike, "small_range": small}


def _draws(x: torch.Tensor, bits: int, backend: str) -> tuple[torch.Tensor, float, float]:
    """REPEATS independent quantizations of x: one message of x repeated (same min/max, so the same grid)."""
    repeated = x.repeat(REPEATS)
    packed, grid = quantize_pack(repeated, bits, noise_key(11, bits, 0), backend=backend)
    values = unpack_dequantize(packed, bits, repeated.numel(), grid.offset, grid.scale, backend=backend)
    return values.view(REPEATS, -1).double(), grid.offset, grid.scale


def _z_scores(draws: torch.Tensor, x: torch.Tensor, offset: float, scale: float) -> torch.Tensor:
    """(mean - x) / standard error, with the exact per-element variance scale^2 f (1 - f) of stochastic rounding."""
    t = (x.double() - offset) / scale
    frac = t - t.floor()
    se = scale * torch.sqrt(frac * (1 - frac) / draws.shape[0])
    bias = draws.mean(0) - x.double()
    on_grid = se < 1e-12 * max(scale, 1e-30)
    z = bias / torch.where(on_grid, torch.ones_like(se), se)
    return torch.where(on_grid, bias.abs() / max(scale, 1e-30) * 1e6, z)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("name", ["outliers", "spike", "small_range"])
def test_quantizer_is_unbiased(name, bits, backend):
    x = _inputs()[name]
    draws, offset, scale = _draws(x, bits, backend)
    z = _z_scores(draws, x, offset, scale)
    assert z.abs().max() < 5, f"mean of {REPEATS} draws is {z.abs().max():.1f} standard errors from x"


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_unbiasedness_check_catches_biased_rounding(bits):
    """The statistic above fails for round-to-nearest and for clipping the outliers, so it can fail."""
    x = _inputs()["outliers"]
    draws, offset, scale = _draws(x, bits, "reference")
    nearest = torch.round((x.double() - offset) / scale) * scale + offset
    assert _z_scores(nearest.expand_as(draws), x, offset, scale).abs().max() > 5
    clipped_grid = (x.quantile(0.9) - x.quantile(0.1)).item() / ((1 << bits) - 1)
    clipped_low = x.quantile(0.1).item()
    t = ((x.double().clamp(x.quantile(0.1), x.quantile(0.9)) - clipped_low) / clipped_grid)
    clipped = (t.floor() + (torch.rand(REPEATS, x.numel(), dtype=torch.float64) < t - t.floor())) * clipped_grid
    assert _z_scores(clipped + clipped_low, x, offset, scale).abs().max() > 5


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("bits", [1, 3, 6, 8])
def test_variance_is_within_the_bound(bits, backend):
    x = _inputs()["outliers"]
    draws, offset, scale = _draws(x, bits, backend)
    variance = draws.var(0, unbiased=False)
    assert variance.max() <= scale**2 / 4 * (1 + 1e-9)
    t = (x.double() - offset) / scale
    frac = t - t.floor()
    expected = scale**2 * frac * (1 - frac)
    assert torch.allclose(variance, expected, atol=0.05 * scale**2)
    # every draw is one of the two neighbouring grid points
    assert ((draws - x.double()).abs() < scale * (1 + 1e-6)).all()


@pytest.mark.parametrize("bits", range(1, 9))
def test_codes_shape_range_and_reproducibility(bits):
    x = torch.randn(3, 17)
    q = quantize(x, bits, key=5)
    assert q.codes.dtype == torch.uint8 and q.codes.shape == x.shape and q.bits == bits
    assert int(q.codes.max()) <= (1 << bits) - 1
    assert torch.equal(q.codes, quantize(x, bits, key=5).codes)
    assert not torch.equal(q.codes, quantize(x, bits, key=6).codes) or bits == 1 and x.numel() < 8
    values = dequantize(q)
    assert values.dtype == torch.float32 and values.shape == x.shape
    assert values.min() == x.min()  # the minimum sits on the grid's first level


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("value", [0.0, -3.25, 1e30])
def test_constant_input_is_exact_and_extremes_stay_put(bits, value):
    constant = torch.full((33,), value)
    assert torch.equal(dequantize(quantize(constant, bits, key=1)), constant)
    # the minimum is the first level and the maximum the last one (up to float32 rounding of the step)
    two = torch.tensor([-1.5, 2.0] * 9)
    q = quantize(two, bits, key=1)
    assert q.codes.tolist() == [0, (1 << bits) - 1] * 9
    torch.testing.assert_close(dequantize(q), two, rtol=1e-6, atol=0)


def test_empty_input():
    q = quantize(torch.empty(0), 4, key=0)
    assert q.codes.numel() == 0 and dequantize(q).numel() == 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_is_rejected(bad):
    with pytest.raises(ValueError, match="non-finite"):
        quantize(torch.tensor([0.0, bad, 1.0]), 4, key=0)


@pytest.mark.parametrize("bits", [0, 9, 16, 32, -1, 2.0, True])
def test_bad_bits_are_rejected(bits):
    with pytest.raises(ConfigError, match="bits"):
        quantize(torch.ones(4), bits, key=0)


def test_ranges_at_the_edges_of_float32():
    with pytest.raises(ValueError, match="too wide"):
        quantize(torch.tensor([-3e38, 3e38]), 4, key=0)
    wide = torch.tensor([-8e37, 0.0, 8e37] * 50)
    values = dequantize(quantize(wide, 1, key=0))
    assert torch.isfinite(values).all() and ((values - wide).abs() <= 1.6e38 * (1 + 1e-6)).all()
    tiny = torch.tensor([0.0, 1e-45, 3e-45, 1e-44] * 50)  # subnormal spacing
    q = quantize(tiny, 3, key=0)
    assert math.isfinite(q.scale) and q.scale > 0
    values = dequantize(q)
    assert torch.isfinite(values).all() and values.min() == 0 and values.max() <= 1e-37
