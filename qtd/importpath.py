"""Resolve ``package.module:factory`` strings, the bring-your-own hook of ``data.name`` and ``model.name``."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Callable

from .errors import QtdError
from .echo import cut, shown


def resolve_factory(path: str, key: str, error: type[QtdError]) -> Callable:
    """Import ``package.module:attr`` and return the callable it names.

    The module is looked up on ``sys.path`` first, then in the current directory (as ``python -m``
    would), so ``model.name=mymodels:make_net`` works from the directory holding ``mymodels.py`` even
    when qtd is started through its console script, which does not put the current directory on the path.
    Failures raise ``error`` naming the config ``key`` and what to change.
    """
    module_name, sep, attr = path.partition(":")
    if not (sep and module_name and attr):
        raise error(f"{key}={shown(path)} is not an import path: write it as package.module:factory")
    try:
        module = _import(module_name)
    except ModuleNotFoundError as exc:
        raise error(f"{key}={shown(path)}: cannot import module {shown(module_name)} ({cut(str(exc))}); make "
                    f"it importable (install it, or run from the directory that holds it, or add that directory "
                    f"to PYTHONPATH)") from exc
    except Exception as exc:  # an error inside the user's module: say where it came from
        raise error(f"{key}={shown(path)}: importing {shown(module_name)} failed: {type(exc).__name__}: "
                    f"{cut(str(exc))}") from exc
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise error(f"{key}={shown(path)}: module {shown(module_name)} has no attribute {shown(attr)}")
        target = getattr(target, part)
    if not callable(target):
        raise error(f"{key}={shown(path)}: {shown(attr)} is a {type(target).__name__}, not a callable factory")
    return target


def _import(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        top_level = module_name.split(".")[0]
        if exc.name != top_level or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)  # appended, so the current directory never shadows an installed package
        return importlib.import_module(module_name)
