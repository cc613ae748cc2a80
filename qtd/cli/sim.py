"""`qtd sim CONFIG [--set key=value ...]`: the virtual-time simulator from the command line."""

from __future__ import annotations

import sys
import warnings
from typing import Sequence

from ..algorithms import display_name, spec_for
from .preflight import preflight


def sim_command(config_path: str, overrides: Sequence[str]) -> int:
    """Check, build, simulate, report. Returns 0, or 1 when the models diverged (the run directory is still
    written). The config, graph and ``run.out_dir`` are checked before any work (the simulator loads the data
    itself, first)."""
    config = preflight(config_path, overrides)
    import torch

    from ..compress import warm_up_for  # heavy imports after the config is known to be good
    from ..metrics.results import result_line
    from ..sim import simulate

    print(f"qtd: simulating {config.topology.nodes} nodes ({display_name(spec_for(config.mode, config.algorithm.name), config.ps.compressor, False)}) on a virtual clock, "
          f"writing to {config.run.out_dir}", file=sys.stderr, flush=True)
    warm_up_for(config, "cuda" if torch.cuda.is_available() else "cpu")  # the simulator's device
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # divergence is reported below, once
        result = simulate(config)
    s = result.summary
    if s["diverged"]:
        keys = spec_for(config.mode, config.algorithm.name).step_keys
        print(f"qtd: error: the models diverged (non-finite values) by iteration {s['iterations']}: lower "
              f"{keys}; partial results in {config.run.out_dir}", file=sys.stderr)
        return 1
    print(result_line(s, config.run.out_dir), file=sys.stderr)
    return 0
