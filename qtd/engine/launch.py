"""`qtd launch CONFIG`: torchrun with one process per graph node on this machine."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Sequence

from ..algorithms import display_name, spec_for
from ..config import load_config
from .resume import preflight
from ..topology import build_topology


def torchrun_command(config_path: str, overrides: Sequence[str], nodes: int, max_restarts: int = 0) -> list[str]:
    """torchrun's command line, run through qtd.engine.torchrun (a failed run ends in one line, no traceback)."""
    command = [sys.executable, "-m", "qtd.engine.torchrun", "--standalone", f"--nproc_per_node={nodes}",
               f"--max-restarts={max_restarts}", "-m", "qtd.train", "--config", str(config_path)]
    for override in overrides:
        command += ["--set", override]
    return command


def launch_command(config_path: str, overrides: Sequence[str], max_restarts: int = 0) -> int:
    """Check the config and graph here (one clear message instead of n copies), then start torchrun."""
    config = load_config(config_path, overrides)
    build_topology(config.topology)
    complete = preflight(config, config.topology.nodes)  # ConfigError where resuming would mislabel results
    if complete:
        print(complete, file=sys.stderr, flush=True)
        return 0
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    command = torchrun_command(config_path, overrides, config.topology.nodes, max_restarts)
    name = display_name(spec_for(config.mode, config.algorithm.name), config.ps.compressor, config.ps.error_feedback)
    print(f"qtd: starting {config.topology.nodes} nodes ({name}),"
          f" writing to {config.run.out_dir}", file=sys.stderr, flush=True)
    process = subprocess.Popen(command, env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:  # torchrun got the same Ctrl-C and is stopping the nodes: let it finish
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        raise
