"""Real multi-process test harness: n gloo processes, each with a timeout; a failing rank fails the test."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONWARNINGS"] = "ignore"
    env.update(extra or {})
    return env


def start_ranks(target: str, world_size: int, tmp_path: Path,
                args: dict[str, Any] | None = None) -> list[subprocess.Popen]:
    """Start ``world_size`` processes running ``module:function(rank, world_size, args, out_path)``.

    Each process joins a gloo group through the environment (as under torchrun); ``out_path`` is a
    per-rank file the function may write its result to.
    """
    port = free_port()
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps(args or {}))
    procs = []
    for rank in range(world_size):
        env = child_env({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                         "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1",
                         "MASTER_PORT": str(port)})
        code = ("import json, sys; from importlib import import_module; "
                f"m, f = {target!r}.split(':'); "
                f"getattr(import_module(m), f)({rank}, {world_size}, json.load(open({str(args_file)!r})), "
                f"{str(tmp_path / f'rank{rank}.out')!r})")
        procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def run_ranks(target: str, world_size: int, tmp_path: Path, args: dict[str, Any] | None = None,
              timeout: float = 120.0, expect_ok: bool = True) -> list[subprocess.CompletedProcess]:
    """Run ``start_ranks`` to the end; every process is killed at ``timeout`` (and the test fails)."""
    results = collect(start_ranks(target, world_size, tmp_path, args), timeout)
    if expect_ok:
        for rank, result in enumerate(results):
            assert result.returncode == 0, f"rank {rank} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return results


def collect(procs: Sequence[subprocess.Popen], timeout: float) -> list[subprocess.CompletedProcess]:
    deadline = time.monotonic() + timeout
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            out, err = proc.communicate()
            raise AssertionError(f"processes did not finish within {timeout} s (hang?):\n{err[-3000:]}")
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def run_qtd(args: Sequence[str], timeout: float = 300.0, env: dict[str, str] | None = None,
            cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run ``python -m qtd.cli.main ARGS`` (what the ``qtd`` console script runs) with a timeout."""
    try:
        return subprocess.run([sys.executable, "-m", "qtd.cli.main", *args], env=child_env(env), cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"qtd {' '.join(args)} did not finish within {timeout} s:\n{exc.stderr}") from None


def run_single_node(config: str | Path, overrides: Sequence[str], timeout: float = 180.0) -> subprocess.CompletedProcess:
    """``python -m qtd.train`` as a world of one process (RANK 0 of WORLD_SIZE 1), no torchrun needed."""
    env = child_env({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                     "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())})
    args = [sys.executable, "-m", "qtd.train", "--config", str(config), *sum((["--set", o] for o in overrides), [])]
    try:
        return subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"python -m qtd.train did not finish within {timeout} s:\n{exc.stderr}") from None
