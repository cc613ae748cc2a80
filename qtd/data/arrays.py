"""In-memory datasets: the whole dataset is one tensor, batches are gathered by index.

Every dataset qtd trains on is small enough to hold in memory (MNIST is 47 MB as uint8, CIFAR-10 150 MB),
so a node draws a micro-batch with one index gather and one fused normalisation instead of going through
a DataLoader: the deadline loop measures model compute, not Python data plumbing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import DataError
from ..config.echo import shown


@dataclass(eq=False)
class ArrayDataset:
    """Inputs ``x`` (N, *input_shape) and int64 ``labels`` (N,) of a classification task.

    ``x`` is stored compactly (uint8 pixels are fine) and turned into normalised float32 per batch:
    ``(x[i].float() - mean) / std``. ``mean`` and ``std`` are in the units of ``x`` (for uint8 pixels,
    0..255) and are scalars or tensors that broadcast over one sample (per channel: shape (C, 1, 1)).
    """

    x: Tensor
    labels: Tensor
    num_classes: int
    mean: Tensor | float = 0.0
    std: Tensor | float = 1.0
    _scale: Tensor = field(init=False, repr=False)
    _shift: Tensor = field(init=False, repr=False)
    _identity: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.x, Tensor) or not isinstance(self.labels, Tensor):
            raise DataError("ArrayDataset needs tensors for x and labels, got "
                            f"{type(self.x).__name__} and {type(self.labels).__name__}")
        if self.x.dim() < 2:
            raise DataError(f"ArrayDataset.x must have shape (N, *input_shape), got {tuple(self.x.shape)}")
        if self.labels.dim() != 1 or len(self.labels) != len(self.x):
            raise DataError(f"ArrayDataset.labels must have shape ({len(self.x)},) to match x, "
                            f"got {tuple(self.labels.shape)}")
        if self.labels.dtype != torch.int64:
            if self.labels.is_floating_point() or self.labels.dtype == torch.bool:
                raise DataError(f"ArrayDataset.labels must be integer class ids, got {self.labels.dtype}")
            self.labels = self.labels.to(torch.int64)
        if self.num_classes < 1:
            raise DataError(f"ArrayDataset.num_classes must be >= 1, got {self.num_classes}")
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes):
            raise DataError(f"labels must lie in 0..{self.num_classes - 1} (num_classes={self.num_classes}), "
                            f"got {int(self.labels.min())}..{int(self.labels.max())}")
        if self.x.is_complex() or self.x.dtype == torch.bool:
            raise DataError(f"ArrayDataset.x must be real numbers, got {self.x.dtype}")
        device = self.x.device
        std = torch.as_tensor(self.std, dtype=torch.float32, device=device)
        if not bool((std > 0).all()):
            raise DataError(f"ArrayDataset.std must be > 0, got {self.std}")
        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=device)
        self._scale = 1.0 / std
        self._shift = -mean / std
        self._identity = bool((mean == 0).all() and (std == 1).all())

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.x.device

    def batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised float32 inputs and int64 labels of the samples at ``indices``."""
        indices = indices.to(self.x.device, non_blocking=True)
        inputs = self.x.index_select(0, indices).to(torch.float32)
        if not self._identity:
            inputs.mul_(self._scale).add_(self._shift)
        return inputs, self.labels.index_select(0, indices)

    def subset(self, indices: Tensor) -> ArrayDataset:
        """A new dataset of the samples at ``indices`` (copied), with the same normalisation."""
        indices = indices.to(self.x.device)
        return ArrayDataset(self.x.index_select(0, indices), self.labels.index_select(0, indices),
                            self.num_classes, self.mean, self.std)

    def to(self, device: torch.device | str) -> ArrayDataset:
        """The same dataset with its tensors on ``device`` (e.g. the node's GPU, so batches never cross PCIe)."""
        def move(value: Tensor | float) -> Tensor | float:
            return value.to(device) if isinstance(value, Tensor) else value
        return ArrayDataset(self.x.to(device), self.labels.to(device), self.num_classes,
                            move(self.mean), move(self.std))


@dataclass(eq=False)
class DatasetSplits:
    """The training data (partitioned over the nodes) and the held-out data.

    For single-split sources loaded with ``data.eval_on=train`` nothing is held out (the paper trains
    and evaluates on the same 10,000 samples) and ``test`` is the training set itself.
    """

    train: ArrayDataset
    test: ArrayDataset

    def __post_init__(self) -> None:
        if self.train.input_shape != self.test.input_shape:
            raise DataError(f"train and test samples differ in shape: {self.train.input_shape} vs "
                            f"{self.test.input_shape}")
        if self.train.num_classes != self.test.num_classes:
            raise DataError(f"train and test disagree on the number of classes: {self.train.num_classes} vs "
                            f"{self.test.num_classes}")

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.train.input_shape


def pixel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and std of ``x`` (N, C, H, W) per channel, shaped (C, 1, 1), or of all of ``x`` otherwise.

    Computed in float64 chunks so that 60,000 uint8 images never become one big float copy.
    """
    per_channel = x.dim() == 4
    dims = (0, 2, 3) if per_channel else tuple(range(x.dim()))
    total = torch.zeros(x.shape[1] if per_channel else 1, dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    count = 0
    for chunk in x.split(4096):
        chunk = chunk.to(torch.float64)
        total += chunk.sum(dim=dims).reshape(-1)
        total_sq += chunk.square().sum(dim=dims).reshape(-1)
        count += chunk.numel() // len(total)
    mean = total / max(count, 1)
    std = (total_sq / max(count, 1) - mean.square()).clamp_min(0).sqrt().clamp_min(1e-6)
    shape = (-1, 1, 1) if per_channel else ()
    return mean.to(torch.float32).reshape(shape), std.to(torch.float32).reshape(shape)


def standardised(splits: DatasetSplits) -> DatasetSplits:
    """Both splits normalised with the training split's pixel mean and std (per channel for images)."""
    mean, std = pixel_stats(splits.train.x)
    train = ArrayDataset(splits.train.x, splits.train.labels, splits.num_classes, mean, std)
    if splits.test is splits.train:
        return DatasetSplits(train, train)
    return DatasetSplits(train, ArrayDataset(splits.test.x, splits.test.labels, splits.num_classes, mean, std))


def holdout_split(size: int, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded train/test index split; both index lists stay in dataset order (contiguous partitions rely on it)."""
    test_size = int(round(size * test_fraction))
    if size < 2 or not 0 < test_size < size:
        raise DataError(f"cannot hold out data.test_fraction={test_fraction} of {size} samples: "
                        f"both splits would not be empty; change data.test_fraction")
    generator = torch.Generator().manual_seed(seed)
    held_out = torch.zeros(size, dtype=torch.bool)
    held_out[torch.randperm(size, generator=generator)[:test_size]] = True
    indices = torch.arange(size)
    return indices[~held_out], indices[held_out]


def split_single(dataset: ArrayDataset, test_fraction: float, eval_on: str, seed: int) -> DatasetSplits:
    """Train/test splits of a source that has only one split.

    ``eval_on=train`` keeps all of it for training (the paper's setting); otherwise ``test_fraction`` of
    it is held out with a seeded draw.
    """
    if eval_on == "train":
        return DatasetSplits(dataset, dataset)
    train_idx, test_idx = holdout_split(len(dataset), test_fraction, seed)
    return DatasetSplits(dataset.subset(train_idx), dataset.subset(test_idx))


def evaluation_set(splits: DatasetSplits, eval_on: str = "test", eval_samples: int = 0,
                   seed: int = 0) -> ArrayDataset:
    """The data the network-average model is evaluated on (``data.eval_on``, ``data.eval_samples``).

    ``eval_samples > 0`` keeps a fixed seeded subset of that many samples, the same at every evaluation.
    """
    if eval_on not in ("test", "train"):
        raise DataError(f"data.eval_on={shown(eval_on)} is not allowed: choose test or train")
    dataset = splits.train if eval_on == "train" else splits.test
    if eval_samples <= 0 or eval_samples >= len(dataset):
        return dataset
    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(dataset), generator=generator)[:eval_samples].sort().values
    return dataset.subset(keep)
