"""The built-in networks. Each takes the sample shape (without the batch dimension) and the class count."""

from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor, nn

PAPER_DEEP_HIDDEN = (30, 20, 20, 25)  # the QuanTimed-DSGD paper's 1024-30-20-20-25-10 network


def _image_shape(input_shape: tuple[int, ...], model: str, min_size: int = 1) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"{model} needs image samples (channels, height, width), got samples of shape "
                         f"{input_shape}")
    channels, height, width = input_shape
    if min(height, width) < min_size:
        raise ValueError(f"{model} needs images of at least {min_size}x{min_size} pixels, got {height}x{width}")
    return channels, height, width


class MLP(nn.Module):
    """Flatten, then fully connected layers with ReLU between them: input -> hidden... -> classes."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: Sequence[int]) -> None:
        super().__init__()
        widths = [math.prod(input_shape), *hidden, num_classes]
        layers: list[nn.Module] = [nn.Flatten()]
        for index, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            if index:
                layers.append(nn.ReLU())
            layers.append(nn.Linear(fan_in, fan_out))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class SmallCNN(nn.Module):
    """Two 3x3 conv + ReLU + 2x2 max-pool blocks (32, 64 channels), then 128 hidden units.

    Works on any image of at least 4x4 pixels: digits (1x8x8), MNIST (1x28x28), CIFAR-10 (3x32x32).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        channels, height, width = _image_shape(input_shape, "cnn", min_size=4)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(64 * (height // 4) * (width // 4), 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class CompAmsCNN(nn.Module):
    """The MNIST CNN of the COMP-AMS experiments (Li, Karimi & Li, ICLR 2022).

    Two convolutions (32 and 64 3x3 filters, ReLU), a 2x2 max-pool, dropout 0.5, a 128-unit fully
    connected layer with ReLU and dropout 0.5, and the output layer. Dropout makes the forward pass
    random in training mode: evaluate with ``module.eval()``.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        channels, height, width = _image_shape(input_shape, "comp_ams_cnn", min_size=6)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, kernel_size=3), nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=3), nn.ReLU(),
            nn.MaxPool2d(2), nn.Dropout(0.5), nn.Flatten(),
        )
        flat = 64 * ((height - 4) // 2) * ((width - 4) // 2)
        self.classifier = nn.Sequential(
            nn.Linear(flat, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels), channels)


def resnet18(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 for small images, with GroupNorm in place of BatchNorm.

    The stem is a 3x3 stride-1 convolution without max-pool (the usual CIFAR adaptation: a 7x7 stride-2
    stem and a max-pool would shrink 32x32 inputs to 8x8 before the first block). GroupNorm replaces
    BatchNorm because decentralized training exchanges and averages parameters only: BatchNorm's running
    statistics are buffers that no node would ever share, so the averaged model would be evaluated with
    one node's statistics.
    """
    from torchvision.models import resnet18 as torchvision_resnet18

    channels, _, _ = _image_shape(input_shape, "resnet18")
    model = torchvision_resnet18(weights=None, num_classes=num_classes, norm_layer=group_norm)
    model.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def linear(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Multinomial logistic regression: one fully connected layer on the flattened input."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))
