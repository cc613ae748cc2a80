"""`qtd sim CONFIG [--set key=value ...]`: the virtual-time simulator from the command line."""

from __future__ import annotations

import sys
import warnings
from typing import Sequence

from ..config import load_config


def sim_command(config_path: str, overrides: Sequence[str]) -> int:
    """Build, simulate, report. Returns 0, or 1 when the models diverged (the run directory is still written)."""
    config = load_config(config_path, overrides)
    from .simulation import simulate  # heavy imports after the config is known to be good

    print(f"qtd: simulating {config.topology.nodes} nodes ({config.algorithm.name}) on a virtual clock, "
          f"writing to {config.run.out_dir}", file=sys.stderr, flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # divergence is reported below, once
        result = simulate(config)
    s = result.summary
    if s["diverged"]:
        print(f"qtd: error: the models diverged (non-finite values) by iteration {s['iterations']}: lower "
              f"algorithm.alpha or algorithm.eps; partial results in {config.run.out_dir}", file=sys.stderr)
        return 1
    print(f"qtd: {s['algorithm']}: {s['iterations']} iterations, virtual time {s['time_s']:.1f} s, "
          f"eval loss {s['eval_loss']:.4f}, accuracy {s['eval_accuracy']:.4f}, consensus error "
          f"{s['consensus_error']:.3g}, {s['bytes_sent'] / 1e6:.1f} MB sent ({s['wall_s']:.1f} s wall)",
          file=sys.stderr)
    return 0
