"""``load_dataset``: every ``data.name`` becomes train/test :class:`ArrayDataset` splits.

Built-in sources: ``digits`` (scikit-learn's bundled 8x8 handwritten digits, no network: the default),
``synthetic`` (a seeded Gaussian mixture for tests), ``mnist_idx`` (MNIST-style IDX files in
``data.root``), ``mnist``/``fashion_mnist``/``cifar10`` (torchvision, see :mod:`qtd.data.vision`), and
``package.module:factory`` import paths (see :mod:`qtd.data.custom`).

Every node of a run calls :func:`load_dataset` with the same config and seed and so holds the same splits;
:func:`qtd.data.partition` then decides which training samples are whose.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..config import DataConfig
from ..echo import shown
from ..errors import DataError
from .arrays import ArrayDataset, DatasetSplits, split_single, standardised
from .idx import read_idx
from .subset import select

SYNTHETIC_SAMPLES = 2000
SYNTHETIC_FEATURES = 20
SYNTHETIC_CLASSES = 10
SYNTHETIC_SEPARATION = 1.0  # std of the class means; the noise around each mean has std 1

IDX_SPLITS = ("train", "t10k")


def load_dataset(config: DataConfig, seed: int = 0) -> DatasetSplits:
    """Load ``config.name`` as train/test splits of normalised in-memory data.

    ``seed`` fixes the held-out draw of single-split sources (and the synthetic data itself); every node
    must pass the same one. ``data.classes`` and ``data.grayscale`` then apply (:mod:`qtd.data.subset`).
    """
    return select(_load(config, seed), config.classes, config.grayscale)


def _load(config: DataConfig, seed: int) -> DatasetSplits:
    name = config.name
    if name == "digits":
        return _digits(config, seed)
    if name == "synthetic":
        return _synthetic(config, seed)
    if name == "mnist_idx":
        return _mnist_idx(config, seed)
    if name in ("mnist", "fashion_mnist", "cifar10"):
        from .vision import load_torchvision
        return load_torchvision(config)
    if ":" in name:
        from .custom import load_custom
        return load_custom(config, seed)
    raise DataError(f"data.name={shown(name)} is not a known dataset: choose digits, synthetic, mnist_idx, "
                    f"mnist, fashion_mnist, cifar10 or give package.module:factory")


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: 1,797 8x8 images with values 0..16 (float64) and their labels.

    Read from the file scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``, what ``load_digits``
    reads) without importing scikit-learn, whose import costs each node process a second or more of CPU;
    ``load_digits`` itself when the file is not where it used to be.
    """
    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                table = np.loadtxt(handle, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


def _digits(config: DataConfig, seed: int) -> DatasetSplits:
    images, target = digits_arrays()
    x = torch.from_numpy(images).to(torch.uint8).unsqueeze(1)  # (N, 1, 8, 8)
    labels = torch.from_numpy(target).to(torch.int64)
    dataset = ArrayDataset(x, labels, num_classes=10)
    return standardised(split_single(dataset, config.test_fraction, config.eval_on, seed))


def _synthetic(config: DataConfig, seed: int) -> DatasetSplits:
    """A seeded mixture of Gaussians, one per class: small, fast, and learnable well above chance."""
    generator = torch.Generator().manual_seed(seed)
    means = SYNTHETIC_SEPARATION * torch.randn(SYNTHETIC_CLASSES, SYNTHETIC_FEATURES, generator=generator)
    labels = torch.randint(SYNTHETIC_CLASSES, (SYNTHETIC_SAMPLES,), generator=generator)
    x = means[labels] + torch.randn(SYNTHETIC_SAMPLES, SYNTHETIC_FEATURES, generator=generator)
    dataset = ArrayDataset(x, labels, SYNTHETIC_CLASSES)
    return split_single(dataset, config.test_fraction, config.eval_on, seed)


def idx_files(root: Path, split: str) -> tuple[Path | None, Path | None]:
    """The images and labels files of ``split`` (train or t10k) in ``root``, or None where absent.

    Accepts the original names (``train-images-idx3-ubyte``), the common dotted variant
    (``train-images.idx3-ubyte``), each gzipped (``.gz``) or not.
    """
    found: list[Path | None] = []
    for kind, dims in (("images", 3), ("labels", 1)):
        names = [f"{split}-{kind}-idx{dims}-ubyte", f"{split}-{kind}.idx{dims}-ubyte"]
        candidates = [root / (name + suffix) for name in names for suffix in ("", ".gz")]
        found.append(next((path for path in candidates if path.is_file()), None))
    return found[0], found[1]


def _read_idx_split(config: DataConfig, images_path: Path, labels_path: Path) -> tuple[Tensor, Tensor]:
    try:
        images, labels = read_idx(images_path), read_idx(labels_path)
    except DataError as exc:
        raise DataError(f"data.name=mnist_idx, data.root={shown(config.root)}: {exc}") from exc
    where = f"data.name=mnist_idx, data.root={shown(config.root)}"
    if images.dim() != 3:
        raise DataError(f"{where}: {images_path.name} holds an array of shape {tuple(images.shape)}, "
                        f"expected images (N, height, width)")
    if labels.dim() != 1 or len(labels) != len(images):
        raise DataError(f"{where}: {labels_path.name} holds {tuple(labels.shape)} labels for "
                        f"{len(images)} images in {images_path.name}; they must be one label per image")
    if len(labels) == 0:
        raise DataError(f"{where}: {images_path.name} holds no images")
    if labels.is_floating_point() or int(labels.min()) < 0:
        raise DataError(f"{where}: {labels_path.name} must hold non-negative integer class ids")
    if images.dtype != torch.uint8:
        images = images.to(torch.float32)
    return images.unsqueeze(1), labels.to(torch.int64)


def _mnist_idx(config: DataConfig, seed: int) -> DatasetSplits:
    root = Path(config.root)
    expected = ("train-images-idx3-ubyte[.gz] with train-labels-idx1-ubyte[.gz], and/or "
                "t10k-images-idx3-ubyte[.gz] with t10k-labels-idx1-ubyte[.gz]")
    if not root.is_dir():
        raise DataError(f"data.root={shown(config.root)} is not a directory: data.name=mnist_idx needs the "
                        f"directory holding {expected} (the README's 'Getting MNIST' says where to find them)")
    arrays: dict[str, tuple[Tensor, Tensor]] = {}
    for split in IDX_SPLITS:
        images_path, labels_path = idx_files(root, split)
        if images_path is None and labels_path is None:
            continue
        if images_path is None or labels_path is None:
            present, missing = (images_path, "labels") if labels_path is None else (labels_path, "images")
            raise DataError(f"data.root={shown(config.root)} holds {shown(present.name)} but no {split} {missing} file "
                            f"beside it: add {split}-{missing}-idx{3 if missing == 'images' else 1}-ubyte[.gz]")
        arrays[split] = _read_idx_split(config, images_path, labels_path)
    if not arrays:
        raise DataError(f"data.root={shown(config.root)} holds no MNIST-style IDX files: data.name=mnist_idx "
                        f"expects {expected}")
    shapes = {split: tuple(x.shape[1:]) for split, (x, _) in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"data.root={shown(config.root)}: the train and t10k images differ in size {shapes}")
    num_classes = max(int(labels.max()) + 1 for _, labels in arrays.values())
    datasets = {split: ArrayDataset(x, y, num_classes) for split, (x, y) in arrays.items()}
    if len(datasets) == 2:
        splits = DatasetSplits(datasets["train"], datasets["t10k"])
    else:
        (only,) = datasets.values()
        splits = split_single(only, config.test_fraction, config.eval_on, seed)
    return standardised(splits)
