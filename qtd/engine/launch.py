"""`qtd launch`'s code lives in :mod:`qtd.cli.launch` (importing this package loads the whole engine and torch,
which the launcher does not need to check a config); these names stay importable from here."""

from ..cli.launch import launch_command, torchrun_command

__all__ = ["launch_command", "torchrun_command"]
