"""What every entry point checks before it starts work, so bad input ends in one line, not in n processes.

- the config: YAML, overrides, types, ranges (:func:`qtd.config.load_config`);
- the graph and its mixing matrix (:func:`qtd.topology.build_topology`);
- ``run.out_dir``: a directory this process can write or create (:func:`qtd.config.check_out_dir`);
- with ``data=True``, the data and the model: the dataset loads, splits over the nodes, and the model takes
  its samples (what each node does first; seconds for the bundled and IDX datasets, and no training).
"""

from __future__ import annotations

from typing import Sequence

from ..config import Config, check_out_dir, load_config
from ..topology import build_topology


def preflight(config_path: str | None, overrides: Sequence[str], *, data: bool = False) -> Config:
    """Load and check a run's config as described above; raise the QtdError of the first problem."""
    config = load_config(config_path, overrides)
    build_topology(config.topology)
    check_out_dir(config.run.out_dir)
    if data:
        check_data(config)
    return config


def check_data(config: Config) -> None:
    """Load the configured dataset, split it over the nodes and build the model, as every node will."""
    from ..engine.problem import build_problem  # torch and the data libraries: only when asked

    build_problem(config)
