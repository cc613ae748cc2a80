"""`qtd sim`'s command-line code lives in :mod:`qtd.cli.sim`; ``sim_command`` stays importable from here."""

from ..cli.sim import sim_command

__all__ = ["sim_command"]
