"""`qtd launch | train | sim | topology | cluster | export | bench | check`: thin entry points."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Sequence

from ..echo import shown
from ..errors import ConfigError, QtdError, one_line
from .args import ArgumentParser, add_config_args, count_in

MAX_RESTARTS = 1000  # torchrun restarts the whole group each time; beyond this a run is failing, not flaky


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="qtd", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    launch = commands.add_parser("launch", help="start torchrun with one process per graph node on this machine")
    add_config_args(launch)
    launch.add_argument("--max-restarts", type=count_in("--max-restarts", 0, MAX_RESTARTS, "a number of restarts"),
                        default=0,
                        help="torchrun elastic restarts after a node process fails (resumes from checkpoints); "
                             "with comm.on_peer_loss=continue, restarts of the lost process only, which rejoins")
    launch.add_argument("--nnodes", type=count_in("--nnodes", 1, 10_000, "a number of machines"), default=1,
                        help="comm.on_peer_loss=continue on several machines: how many (run once per machine)")
    launch.add_argument("--node-rank", type=count_in("--node-rank", 0, 9_999, "a machine number"), default=0,
                        help="this machine's number, 0 .. nnodes-1 (machine 0 hosts the store)")
    launch.add_argument("--rdzv-endpoint", default=None, metavar="HOST:PORT",
                        help="with --nnodes > 1: machine 0's address and a free port every machine reaches")

    train = commands.add_parser("train", help="run this process's node (what torchrun starts: python -m qtd.train)")
    add_config_args(train)

    sim = commands.add_parser("sim", help="run all nodes in one process on a virtual clock")
    add_config_args(sim)

    topology = commands.add_parser("topology", help="print the graph, its mixing matrix and spectral gap")
    add_config_args(topology)
    topology.add_argument("--png", default=None, help="also save a drawing of the graph to this PNG file")

    check = commands.add_parser("check", help="check a config, its graph, run directory and data; print the "
                                              "node count (python -m qtd.cli.check)")
    add_config_args(check)
    export = commands.add_parser("export", help="write model.pt (the network-average model's state_dict) from a "
                                 "run's checkpoints")
    export.add_argument("run_dir", help="the run.out_dir of a run, e.g. runs/quickstart")
    export.add_argument("--node", type=int, default=None, help="export node K's model instead of the average")
    export.add_argument("--iteration", type=int, default=None, help="the checkpoint of this iteration (default: "
                        "the newest complete one)")
    export.add_argument("-o", "--output", default=None, help="the file to write (default: RUN_DIR/model.pt, or "
                        "RUN_DIR/model_node_K.pt with --node)")
    cluster = commands.add_parser("cluster", add_help=False,
                                  help="rehearse on a slow heterogeneous cluster on one box (qtd cluster --help)")
    cluster.add_argument("args", nargs=argparse.REMAINDER, help="qtd cluster run | cleanup | check ...")

    bench = commands.add_parser("bench", help="run a benchmark from benchmarks/ (e.g. qtd bench wallclock --quick)")
    bench.add_argument("name", help="benchmark name: one of the files benchmarks/NAME.py")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark (--quick, --out DIR)")
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["cluster"]:  # its own parser (options, then a torchrun target after --)
        from ..cluster.cli import cluster_command
        return cluster_command(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "launch":
        from .launch import launch_command
        return launch_command(args.config, args.overrides, max_restarts=args.max_restarts, machines=args.nnodes,
                              machine=args.node_rank, endpoint=args.rdzv_endpoint)
    if args.command == "train":
        from ..train import train_command
        return train_command(args.config, args.overrides)
    if args.command == "sim":
        from .sim import sim_command
        return sim_command(args.config, args.overrides)
    if args.command == "topology":
        from ..topology.cli import topology_command
        return topology_command(args.config, args.overrides, png=args.png)
    if args.command == "check":
        from .check import check_command
        print(check_command(args.config, args.overrides))
        return 0
    if args.command == "export":
        from .export import export_command
        return export_command(args.run_dir, node=args.node, iteration=args.iteration, out=args.output)
    if args.command == "bench":
        return bench_command(args.name, args.args)
    raise AssertionError(f"unhandled command {args.command}")


_BENCHMARK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]*")


def benchmark_roots() -> list[Path]:
    """Where `qtd bench` looks for benchmarks/: the current directory, then the checkout qtd runs from."""
    return [Path.cwd(), Path(__file__).resolve().parents[2]]


def available_benchmarks() -> dict[str, Path]:
    """Benchmark name -> script: the files benchmarks/NAME.py (helpers start with _ and are not benchmarks)."""
    found: dict[str, Path] = {}
    for root in benchmark_roots():
        for script in sorted((root / "benchmarks").glob("*.py")):
            if _BENCHMARK_NAME.fullmatch(script.stem) and script.is_file():
                found.setdefault(script.stem, script)
    return found


def bench_command(name: str, args: Sequence[str]) -> int:
    """Run benchmarks/NAME.py, NAME being one of the benchmarks there by name (never a path)."""
    import subprocess

    available = available_benchmarks()
    if name not in available:
        names = ", ".join(available) or "none found (run from the qtd checkout)"
        hint = "" if _BENCHMARK_NAME.fullmatch(name) else " (give a benchmark's name, not a path)"
        raise ConfigError(f"no benchmark named {shown(name)}{hint}; available: {names}")
    return subprocess.call([sys.executable, str(available[name]), *args])


def main(argv: Sequence[str] | None = None) -> None:
    try:
        code = run(argv)
    except QtdError as exc:
        print(f"qtd: error: {one_line(exc)}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("qtd: interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:  # `qtd topology ... | head`: the reader left, nothing is wrong
        sys.stderr.close()
        code = 0
    sys.exit(code)


if __name__ == "__main__":
    main()
