"""``data.classes`` and ``data.grayscale``: a subset of the classes and grayscale images, for any source.

The paper's CIFAR-10 experiment is binary classification of grayscale 32x32 images (1,024 inputs to the
MLP): ``data.classes: [0, 1]`` keeps the samples of those classes, relabelled 0, 1, ... in the order given,
and ``data.grayscale: true`` turns RGB images into one channel of luma, 0.299 R + 0.587 G + 0.114 B
(ITU-R BT.601, what PIL's ``convert("L")`` computes). Both apply to the raw pixels before the splits are
standardised again with the training split's statistics.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..echo import shown
from ..errors import DataError
from .arrays import ArrayDataset, DatasetSplits, standardised

LUMA = (0.299, 0.587, 0.114)


def select(splits: DatasetSplits, classes: Sequence[int], grayscale: bool) -> DatasetSplits:
    """``splits`` with only ``classes`` (relabelled by position; empty: all) and, with ``grayscale``, luma
    images; unchanged when neither applies."""
    if not classes and not grayscale:
        return splits
    if classes:
        _check_classes(classes, splits.num_classes)
    train = _transform(splits.train, classes, grayscale, "training")
    test = train if splits.test is splits.train else _transform(splits.test, classes, grayscale, "held-out")
    return standardised(DatasetSplits(train, test))


def _check_classes(classes: Sequence[int], num_classes: int) -> None:
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise DataError(f"data.classes={shown(list(classes))} is not allowed: give two or more different class ids")
    outside = [c for c in classes if not 0 <= c < num_classes]
    if outside:
        raise DataError(f"data.classes={shown(list(classes))} is not allowed: this dataset has classes "
                        f"0..{num_classes - 1}, not {', '.join(map(str, outside))}")


def _transform(data: ArrayDataset, classes: Sequence[int], grayscale: bool, which: str) -> ArrayDataset:
    x, labels, num_classes = data.x, data.labels, data.num_classes
    if classes:
        relabel = torch.full((num_classes,), -1, dtype=torch.int64)
        relabel[torch.tensor(list(classes))] = torch.arange(len(classes))
        new = relabel[labels]
        keep = new >= 0
        if not bool(keep.any()):
            raise DataError(f"data.classes={shown(list(classes))}: the {which} split holds no sample of these classes")
        x, labels, num_classes = x[keep], new[keep], len(classes)
    if grayscale:
        x = _luma(x)
    return ArrayDataset(x, labels, num_classes)


def _luma(x: Tensor) -> Tensor:
    """(N, 3, H, W) RGB -> (N, 1, H, W); one-channel images stay as they are."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise DataError(f"data.grayscale=true needs images of shape (N, 3, H, W) or (N, 1, H, W), "
                        f"got {tuple(x.shape)}")
    if x.shape[1] == 1:
        return x
    weights = torch.tensor(LUMA, dtype=torch.float32).view(1, 3, 1, 1)
    luma = (x.float() * weights).sum(dim=1, keepdim=True)
    return luma.round().clamp(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else luma
