"""`qtd launch CONFIG`: torchrun with one process per graph node on this machine.

Before torchrun starts, the launcher checks the whole run once (config, graph, ``run.out_dir``, data and
model: :func:`qtd.cli.preflight.preflight`), so bad input is one line instead of n node failures, and
compiles the CPU compression kernels once (:func:`qtd.compress.warm_up`), so the nodes load them instead of
compiling them all at once. torchrun's launcher then runs in this process (:mod:`qtd.engine.torchrun`,
exactly ``torchrun_command``'s arguments). A run that ends well prints one result line from its
``summary.json``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Sequence

from ..algorithms import display_name, spec_for
from ..engine.resume import check_resume
from ..errors import ConfigError
from .preflight import preflight


def torchrun_command(config_path: str, overrides: Sequence[str], nodes: int, max_restarts: int = 0) -> list[str]:
    """torchrun's command line, run through qtd.engine.torchrun (a failed run ends in one line, no traceback)."""
    command = [sys.executable, "-m", "qtd.engine.torchrun", "--standalone", f"--nproc_per_node={nodes}",
               f"--max-restarts={max_restarts}", "-m", "qtd.train", "--config", str(config_path)]
    for override in overrides:
        command += ["--set", override]
    return command


def launch_command(config_path: str, overrides: Sequence[str], max_restarts: int = 0, machines: int = 1,
                   machine: int = 0, endpoint: str | None = None) -> int:
    """Check the run here (one clear message instead of n copies), warm up, start torchrun (or, for an elastic
    run, qtd's supervisor: on ``machines`` machines, this one number ``machine``), report."""
    if max_restarts < 0:
        raise ConfigError(f"--max-restarts={max_restarts} is not allowed: give a number of restarts >= 0")
    config = preflight(config_path, overrides, data=True)
    if machines > 1 or endpoint is not None:
        _check_machines(config, machines, machine, endpoint)
    complete = check_resume(config, config.topology.nodes)  # ConfigError where resuming would mislabel results
    if complete:
        print(complete, file=sys.stderr, flush=True)
        return 0
    from ..compress import warm_up_for  # imports torch: after the checks

    warm_up_for(config, "cpu")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the node processes inherit both
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    command = torchrun_command(config_path, overrides, config.topology.nodes, max_restarts)
    kind = display_name(spec_for(config.mode, config.algorithm.name), config.ps.compressor, config.ps.error_feedback)
    n = config.topology.nodes
    which = (f"nodes {machine * n // machines}-{(machine + 1) * n // machines - 1} of {n}" if machines > 1
             else f"{n} nodes")
    print(f"qtd: starting {which} ({kind}), writing to {config.run.out_dir}", file=sys.stderr, flush=True)
    started = time.time()
    if config.comm.on_peer_loss == "continue":  # the nodes outlive each other: qtd's supervisor, not torchrun
        from ..engine.supervise import supervise

        node_command = [sys.executable, *command[command.index("-m", 3):]]  # torchrun's worker command
        code = supervise(node_command, config.topology.nodes, config.comm.timeout_s, max_restarts, machines, machine,
                         endpoint)
    else:
        from ..engine.torchrun import run_torchrun  # torch is loaded already: run the launcher in this process

        code = run_torchrun(command[3:])  # what `python -m qtd.engine.torchrun ARGS` runs, one interpreter fewer
    if code == 0:
        _report(Path(config.run.out_dir), started)
    return code


def _check_machines(config, machines: int, machine: int, endpoint: str | None) -> None:
    """--nnodes, --node-rank and --rdzv-endpoint start an elastic run on several machines (qtd's supervisor)."""
    if config.comm.on_peer_loss != "continue":
        raise ConfigError("--nnodes and --rdzv-endpoint start an elastic run (comm.on_peer_loss=continue) on several "
                          "machines; for other runs use launch/multi_node.sh (torchrun) on every machine")
    if machines < 2 or endpoint is None:
        raise ConfigError("an elastic run on several machines needs both --nnodes N (N >= 2) and --rdzv-endpoint "
                          "HOST:PORT (machine 0's address and a free port)")
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--rdzv-endpoint={endpoint!r} is not HOST:PORT with a port in 1..65535")
    if not 0 <= machine < machines:
        raise ConfigError(f"--node-rank={machine} is not a machine of --nnodes={machines}: use 0 .. {machines - 1}")
    if config.topology.nodes % machines:
        raise ConfigError(f"topology.nodes={config.topology.nodes} does not split evenly over --nnodes={machines} "
                          "machines: use a multiple of the machine count")


def _report(out_dir: Path, started: float) -> None:
    """One line from the summary.json this run wrote (nothing when it wrote none, e.g. an older one is there)."""
    from ..metrics.results import read_result_line

    summary = out_dir / "summary.json"
    try:
        fresh = summary.stat().st_mtime >= started - 1.0
    except OSError:
        fresh = False
    line = read_result_line(out_dir) if fresh else None
    if line is not None:
        print(line, file=sys.stderr, flush=True)
    else:
        print(f"qtd: the run ended without writing {summary}", file=sys.stderr, flush=True)
