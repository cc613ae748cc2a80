"""Bring your own data: ``data.name=package.module:factory``.

The factory is called with no arguments, or with any of ``root`` (``data.root``), ``seed`` (the run seed)
and ``download`` (``data.download``) as keyword arguments that its signature names. It returns one of:

- a :class:`DatasetSplits`;
- ``(train, test)``, each an :class:`ArrayDataset`, a map-style ``torch.utils.data.Dataset`` whose items
  are ``(input, label)`` pairs, or an ``(inputs, labels)`` pair of tensors / numpy arrays; ``test`` may be
  ``None``;
- a single one of those, from which ``data.test_fraction`` is held out (nothing when ``data.eval_on=train``).

Inputs that arrive as uint8 are standardised with the training split's mean and std (per channel for
(N, C, H, W) images); floating-point inputs are used as given, so normalise them in your factory or
Dataset transform. ``num_classes`` is the largest label + 1 (or ``len(dataset.classes)`` when larger).
Every item of a torch Dataset is read once, at load time, into one in-memory tensor.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..config import DataConfig
from ..echo import cut, shown
from ..errors import DataError
from ..importpath import resolve_factory
from .arrays import ArrayDataset, DatasetSplits, split_single, standardised

ACCEPTED = ("a DatasetSplits, (train, test), or one dataset; each dataset an ArrayDataset, a torch Dataset "
            "of (input, label) items, or an (inputs, labels) pair of tensors/arrays")


def load_custom(config: DataConfig, seed: int) -> DatasetSplits:
    factory = resolve_factory(config.name, "data.name", DataError)
    kwargs = _keyword_arguments(factory, {"root": config.root, "seed": seed, "download": config.download})
    try:
        result = factory(**kwargs)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"data.name={shown(config.name)}: the factory raised {type(exc).__name__}: "
                        f"{cut(str(exc))}") from exc
    return to_splits(result, config, seed)


def _keyword_arguments(factory: Any, available: dict[str, Any]) -> dict[str, Any]:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature: call them bare
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(available)
    return {name: value for name, value in available.items() if name in parameters}


def to_splits(result: Any, config: DataConfig, seed: int) -> DatasetSplits:
    """Turn whatever a data factory returned into :class:`DatasetSplits` (see the module docstring)."""
    where = f"data.name={shown(config.name)}"
    if isinstance(result, DatasetSplits):
        return result
    if isinstance(result, ArrayDataset) or _is_pair_of_arrays(result) or _is_dataset(result):
        parts = [_raw(result, where, "the dataset")]
        test_given = False
    elif isinstance(result, (tuple, list)) and len(result) == 2:
        parts = [_raw(result[0], where, "train")]
        test_given = result[1] is not None
        if test_given:
            parts.append(_raw(result[1], where, "test"))
    else:
        raise DataError(f"{where}: the factory returned a {type(result).__name__}; return {ACCEPTED}")
    num_classes = max(max(hint, int(labels.max()) + 1) for _, labels, hint in parts)
    if test_given and parts[0][0].shape[1:] != parts[1][0].shape[1:]:
        raise DataError(f"{where}: train samples have shape {tuple(parts[0][0].shape[1:])} but test samples "
                        f"{tuple(parts[1][0].shape[1:])}")
    datasets = [ArrayDataset(x, labels, num_classes) for x, labels, _ in parts]
    if test_given:
        splits = DatasetSplits(datasets[0], datasets[1])
    else:
        splits = split_single(datasets[0], config.test_fraction, config.eval_on, seed)
    return standardised(splits) if splits.train.x.dtype == torch.uint8 else splits


def _is_array(value: Any) -> bool:
    return isinstance(value, (Tensor, np.ndarray))


def _is_pair_of_arrays(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_array(v) for v in value)


def _is_dataset(value: Any) -> bool:
    return isinstance(value, Dataset) or (hasattr(value, "__getitem__") and hasattr(value, "__len__")
                                          and not isinstance(value, (tuple, list, str, bytes, dict)))


def _raw(part: Any, where: str, what: str) -> tuple[Tensor, Tensor, int]:
    """(inputs, int64 labels, a lower bound on num_classes) of one split."""
    if isinstance(part, ArrayDataset):
        x, labels, hint = part.x, part.labels, part.num_classes
        if not (isinstance(part.mean, float) and part.mean == 0.0 and isinstance(part.std, float)
                and part.std == 1.0):
            x = part.batch(torch.arange(len(part)))[0]  # keep the user's normalisation
    elif _is_pair_of_arrays(part):
        x, labels, hint = torch.as_tensor(part[0]), torch.as_tensor(part[1]), 0
    elif _is_dataset(part):
        x, labels = _read_dataset(part, where, what)
        hint = len(part.classes) if isinstance(getattr(part, "classes", None), (list, tuple)) else 0
    else:
        raise DataError(f"{where}: {what} is a {type(part).__name__}; return {ACCEPTED}")
    if len(x) != len(labels) or labels.dim() != 1:
        raise DataError(f"{where}: {what} has {len(x)} inputs but labels of shape {tuple(labels.shape)}")
    if len(labels) == 0:
        raise DataError(f"{where}: {what} is empty")
    if x.dim() < 2:
        raise DataError(f"{where}: {what} inputs have shape {tuple(x.shape)}; give (N, *input_shape)")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise DataError(f"{where}: {what} labels must be integer class ids, got {labels.dtype}")
    if int(labels.min()) < 0:
        raise DataError(f"{where}: {what} labels must be class ids >= 0, got {int(labels.min())}")
    if x.is_floating_point() and x.dtype != torch.float32:
        x = x.to(torch.float32)
    return x, labels.to(torch.int64), hint


def _read_dataset(dataset: Any, where: str, what: str) -> tuple[Tensor, Tensor]:
    inputs, labels = [], []
    for index in range(len(dataset)):
        item = dataset[index]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise DataError(f"{where}: {what}[{index}] is a {type(item).__name__}; items must be "
                            f"(input, label) pairs")
        inputs.append(_as_tensor(item[0]))
        labels.append(int(item[1]))
        if inputs[-1].shape != inputs[0].shape:
            raise DataError(f"{where}: {what}[{index}] has shape {tuple(inputs[-1].shape)} but {what}[0] "
                            f"has {tuple(inputs[0].shape)}; every input must have the same shape")
    if not inputs:
        raise DataError(f"{where}: {what} is empty")
    return torch.stack(inputs), torch.tensor(labels, dtype=torch.int64)


def _as_tensor(value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if hasattr(value, "getbands"):  # a PIL image: channels first, as torchvision's transforms would
        from torchvision.transforms.functional import pil_to_tensor
        return pil_to_tensor(value)
    return torch.as_tensor(np.asarray(value))
