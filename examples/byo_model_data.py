"""Bring your own model and data: train any ``nn.Module`` on any dataset without editing qtd.

Point the config at the two factories below by import path (run from the repository root, or from any
directory where ``examples/`` is importable)::

    data:
      name: examples.byo_model_data:make_spirals
    model:
      name: examples.byo_model_data:make_model

or on the command line: ``--set data.name=examples.byo_model_data:make_spirals
--set model.name=examples.byo_model_data:make_model``.

The data factory may take ``root``, ``seed`` and/or ``download`` keyword arguments (qtd passes
``data.root``, the run seed and ``data.download``) and returns ``(train, test)``: here two torch Datasets
of ``(input, label)`` pairs; an ``(inputs, labels)`` pair of tensors or one dataset works too (then
``data.test_fraction`` is held out). The model factory takes ``(input_shape, num_classes)`` (or nothing)
and returns an ``nn.Module`` that maps a batch ``(B, *input_shape)`` to logits ``(B, num_classes)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

ARMS = 3
POINTS_PER_ARM = 400


class Spirals(Dataset):
    """Points on ``ARMS`` interleaved noisy spiral arms in the plane; the label is the arm."""

    def __init__(self, points: Tensor, labels: Tensor) -> None:
        self.points, self.labels = points, labels
        self.classes = [f"arm {arm}" for arm in range(ARMS)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.points[index], int(self.labels[index])


def make_spirals(seed: int = 0) -> tuple[Spirals, Spirals]:
    """A seeded train set and a test set drawn independently from the same spirals."""
    generator = torch.Generator().manual_seed(seed)

    def draw() -> Spirals:
        radius = torch.rand(ARMS * POINTS_PER_ARM, generator=generator)
        labels = torch.arange(ARMS).repeat_interleave(POINTS_PER_ARM)
        angle = 1.5 * math.pi * radius + labels * (2 * math.pi / ARMS)
        points = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
        points += 0.03 * torch.randn(points.shape, generator=generator)
        return Spirals(points * 2, labels)  # x2: inputs of roughly unit scale

    return draw(), draw()


class TwoLayerTanhNet(nn.Module):
    """A small network of your own: flatten, two tanh hidden layers, logits."""

    def __init__(self, in_features: int, num_classes: int, width: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.Tanh(),
                                  nn.Linear(width, width), nn.Tanh(), nn.Linear(width, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def make_model(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return TwoLayerTanhNet(math.prod(input_shape), num_classes)
