"""`qtd launch | train | sim | topology | export | bench`: thin entry points that build, run and close."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..errors import ConfigError, QtdError


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file, e.g. configs/quickstart.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set topology.nodes=8 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qtd", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    launch = commands.add_parser("launch", help="start torchrun with one process per graph node on this machine")
    _add_config_args(launch)
    launch.add_argument("--max-restarts", type=int, default=0,
                        help="torchrun elastic restarts after a node process fails (resumes from checkpoints)")

    train = commands.add_parser("train", help="run this process's node (what torchrun starts: python -m qtd.train)")
    _add_config_args(train)

    sim = commands.add_parser("sim", help="run all nodes in one process on a virtual clock")
    _add_config_args(sim)

    topology = commands.add_parser("topology", help="print the graph, its mixing matrix and spectral gap")
    _add_config_args(topology)
    topology.add_argument("--png", default=None, help="also save a drawing of the graph to this PNG file")

    export = commands.add_parser("export", help="write model.pt (the network-average model's state_dict) from a "
                                 "run's checkpoints")
    export.add_argument("run_dir", help="the run.out_dir of a run, e.g. runs/quickstart")
    export.add_argument("--node", type=int, default=None, help="export node K's model instead of the average")
    export.add_argument("--iteration", type=int, default=None, help="the checkpoint of this iteration (default: "
                        "the newest complete one)")
    export.add_argument("-o", "--output", default=None, help="the file to write (default: RUN_DIR/model.pt, or "
                        "RUN_DIR/model_node_K.pt with --node)")

    bench = commands.add_parser("bench", help="run a benchmark from benchmarks/ (e.g. qtd bench wallclock --quick)")
    bench.add_argument("name", help="benchmark name: a file benchmarks/NAME.py")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark (--quick, --out DIR)")
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "launch":
        from ..engine.launch import launch_command
        return launch_command(args.config, args.overrides, max_restarts=args.max_restarts)
    if args.command == "train":
        from ..train import train_command
        return train_command(args.config, args.overrides)
    if args.command == "sim":
        from ..sim.cli import sim_command
        return sim_command(args.config, args.overrides)
    if args.command == "topology":
        from ..topology.cli import topology_command
        return topology_command(args.config, args.overrides, png=args.png)
    if args.command == "export":
        from .export import export_command
        return export_command(args.run_dir, node=args.node, iteration=args.iteration, out=args.output)
    if args.command == "bench":
        return bench_command(args.name, args.args)
    raise AssertionError(f"unhandled command {args.command}")


def bench_command(name: str, args: Sequence[str]) -> int:
    """Run benchmarks/NAME.py from the current directory or from the checkout qtd was installed from."""
    import subprocess
    from pathlib import Path

    roots = [Path.cwd(), Path(__file__).resolve().parents[2]]
    candidates = [root / "benchmarks" / f"{name}.py" for root in roots]
    script = next((path for path in candidates if path.is_file()), None)
    if script is None:
        available = sorted({p.stem for root in roots for p in (root / "benchmarks").glob("*.py")
                            if not p.stem.startswith("_")})
        raise ConfigError(f"no benchmark named {name!r}; available: {', '.join(available) or 'none found'} "
                          "(run from the qtd checkout)")
    return subprocess.call([sys.executable, str(script), *args])


def main(argv: Sequence[str] | None = None) -> None:
    try:
        code = run(argv)
    except QtdError as exc:
        print(f"qtd: error: {exc}", file=sys.stderr)
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
