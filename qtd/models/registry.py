"""``build_model``: ``model.name`` -> an ``nn.Module`` checked against the data's sample shape.

A user model is named by an import path ``package.module:factory``; the factory is called as
``factory(input_shape, num_classes)`` when its signature takes two arguments, otherwise as ``factory()``,
and must return an ``nn.Module`` mapping a batch (B, *input_shape) to logits (B, num_classes).
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import nn

from ..config import ModelConfig
from ..echo import cut, shown
from ..errors import ConfigError
from ..importpath import resolve_factory
from .nets import MLP, PAPER_DEEP_HIDDEN, CompAmsCNN, SmallCNN, linear, resnet18

ModelFactory = Callable[[tuple[int, ...], int], nn.Module]


def _builtin(config: ModelConfig) -> ModelFactory:
    builders: dict[str, ModelFactory] = {
        "mlp": lambda shape, classes: MLP(shape, classes, config.hidden),
        "mlp_deep": lambda shape, classes: MLP(shape, classes, PAPER_DEEP_HIDDEN),
        "cnn": SmallCNN,
        "comp_ams_cnn": CompAmsCNN,
        "resnet18": resnet18,
        "linear": linear,
    }
    return builders[config.name]


def build_model(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int,
                seed: int | None = None) -> nn.Module:
    """Build ``config.name`` for samples of ``input_shape`` and ``num_classes`` classes.

    With ``seed`` the initial weights come from ``torch.manual_seed(seed)`` without disturbing the global
    RNG, so every node that builds with the same seed starts from the same model. A dry forward pass on
    one zero sample checks that the model fits the data; if it does not, the :class:`ConfigError` names
    ``model.name`` and ``data.name``.
    """
    input_shape = tuple(int(size) for size in input_shape)
    if seed is None:
        model = _construct(config, input_shape, num_classes)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _construct(config, input_shape, num_classes)
    _check_fits(model, config, input_shape, num_classes)
    return model


def _construct(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if ":" in config.name:
        factory = resolve_factory(config.name, "model.name", ConfigError)
        try:
            model = _call_user_factory(factory, input_shape, num_classes)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"model.name={shown(config.name)}: the factory raised {type(exc).__name__}: "
                              f"{cut(str(exc))}") \
                from exc
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model.name={shown(config.name)}: the factory returned a {type(model).__name__}, "
                              f"not a torch.nn.Module")
        return model
    try:
        return _builtin(config)(input_shape, num_classes)
    except ValueError as exc:
        raise ConfigError(f"model.name={config.name} does not fit the data: {exc}; pick a model.name for "
                          f"this data.name (mlp and linear take any sample shape)") from exc


def _call_user_factory(factory: Callable, input_shape: tuple[int, ...], num_classes: int) -> object:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return factory(input_shape, num_classes)
    try:
        signature.bind(input_shape, num_classes)
    except TypeError:
        return factory()
    return factory(input_shape, num_classes)


def _check_fits(model: nn.Module, config: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> None:
    parameter = next(model.parameters(), None)
    if parameter is None:
        raise ConfigError(f"model.name={shown(config.name)} has no parameters: there is nothing to train")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(torch.zeros((1, *input_shape), dtype=parameter.dtype, device=parameter.device))
    except Exception as exc:
        raise ConfigError(f"model.name={shown(config.name)} cannot take the samples of data.name (shape "
                          f"{input_shape}): {type(exc).__name__}: {cut(str(exc))}; choose a model for this data") \
            from exc
    finally:
        model.train(was_training)
    if not isinstance(output, torch.Tensor) or tuple(output.shape) != (1, num_classes):
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ConfigError(f"model.name={shown(config.name)} maps one sample of data.name (shape {input_shape}) to "
                          f"{got}, but the data has {num_classes} classes: it must return logits of shape "
                          f"(batch, {num_classes})")
