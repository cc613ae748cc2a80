import math

import pytest
import torch
from torch.testing import assert_close

from qtd.algorithms import (AMSGradState, amsgrad_step, consensus_error, dsgd_update, lr_at, mix_neighbours,
                            quantimed_update, step_sizes)
from qtd.errors import ConfigError


def test_quantimed_update_matches_hand_computation():
    x = torch.tensor([1.0, -2.0])
    z1, z2 = torch.tensor([3.0, 0.0]), torch.tensor([-1.0, 4.0])
    g = torch.tensor([0.5, 1.0])
    w_self, w1, w2, alpha, eps = 0.5, 0.25, 0.25, 0.2, 0.1
    mixed = mix_neighbours([(z1, w1), (z2, w2)], out=torch.empty(2))
    new = quantimed_update(x, mixed, w_self, g, alpha, eps)
    # (1 - eps + eps*w_ii) * x + eps * sum w_ij z_j - alpha*eps*g, by hand:
    # coordinate 0: 0.95*1 + 0.1*(0.75 - 0.25) - 0.02*0.5 = 0.95 + 0.05 - 0.01 = 0.99
    # coordinate 1: 0.95*-2 + 0.1*(0 + 1) - 0.02*1 = -1.9 + 0.1 - 0.02 = -1.82
    assert_close(new, torch.tensor([0.99, -1.82]))


def test_dsgd_update_matches_hand_computation():
    x = torch.tensor([2.0])
    mixed = mix_neighbours([(torch.tensor([4.0]), 0.3), (torch.tensor([0.0]), 0.3)], out=torch.empty(1))
    assert_close(dsgd_update(x, mixed, 0.4, torch.tensor([1.0]), 0.5), torch.tensor([0.8 + 1.2 - 0.5]))


def test_stacked_update_equals_per_node_updates():
    torch.manual_seed(0)
    n, p = 4, 7
    w = torch.tensor([[0.5, 0.25, 0.0, 0.25], [0.25, 0.5, 0.25, 0.0],
                      [0.0, 0.25, 0.5, 0.25], [0.25, 0.0, 0.25, 0.5]])
    x, z, g = torch.randn(n, p), torch.randn(n, p), torch.randn(n, p)
    off_diagonal = w - torch.diag(torch.diag(w))
    stacked = quantimed_update(x, off_diagonal @ z, torch.diag(w), g, 0.1, 0.3)
    for i in range(n):
        neighbours = [j for j in range(n) if j != i and w[i, j] > 0]
        mixed = mix_neighbours([(z[j], float(w[i, j])) for j in neighbours], out=torch.empty(p))
        assert_close(stacked[i], quantimed_update(x[i], mixed, float(w[i, i]), g[i], 0.1, 0.3))


def test_paper_schedule():
    sizes = step_sizes("paper", 0.3, 15.0, 729)
    assert math.isclose(sizes.alpha, 0.3 / 3) and math.isclose(sizes.eps, 15 / 27)
    assert step_sizes("paper", 0.3, 15.0, 4).eps == 1.0  # capped: eps > 1 would overshoot consensus
    assert step_sizes("constant", 0.1, 0.5, 10) == step_sizes("constant", 0.1, 0.5, 99)
    with pytest.raises(ConfigError, match="algorithm.eps"):
        step_sizes("constant", 0.1, 2.0, 10)


def test_amsgrad_step_matches_hand_computation():
    theta = torch.tensor([1.0, 1.0])
    state = AMSGradState.zeros_like(theta)
    amsgrad_step(theta, torch.tensor([1.0, -2.0]), state, lr=0.1, beta1=0.5, beta2=0.75, eps=0.0)
    # m = 0.5*g, v = 0.25*g^2, v_hat = v, step = -0.1 * 0.5 g / (0.5 |g|) = -0.1 sign(g)
    assert_close(theta, torch.tensor([0.9, 1.1]))
    amsgrad_step(theta, torch.tensor([0.0, 0.0]), state, lr=0.1, beta1=0.5, beta2=0.75, eps=0.0)
    # v shrinks but v_hat keeps its maximum: m = 0.25 g_1, v_hat = 0.25 g_1^2 -> step 0.05 sign(g_1)
    assert_close(theta, torch.tensor([0.85, 1.15]))
    assert_close(state.v_hat, torch.tensor([0.25, 1.0]))


def test_lr_schedule():
    assert lr_at(0, 1.0, warmup_steps=4) == 0.25
    assert lr_at(3, 1.0, warmup_steps=4) == 1.0
    assert lr_at(4 + 10, 1.0, warmup_steps=4, decay_every=10, decay_gamma=0.5) == 0.5


def test_consensus_error():
    models = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert consensus_error(models) == pytest.approx(1.0)
