"""`qtd cluster run | cleanup | check`: rehearse a run on a slow, heterogeneous cluster on one box.

    qtd cluster run --cpu-share 0.5,0.25,0.25,0.1 --uplink-mbit 20 CONFIG [--set key=value ...]
    qtd cluster run --machines 4 --cpu-share 0.25 --uplink-mbit 100 -- script.py [script args]
    qtd cluster cleanup        # remove what runs that were killed outright left behind
    qtd cluster check          # can this machine do it? (root, iproute2, cgroup v1, netns, veth, htb)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError
from .spec import ClusterSpec, CpuModel, LinkModel, MAX_RATE_MBIT, parse_numbers, parse_pairs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qtd cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="action", required=True)
    run = commands.add_parser(
        "run", help="run torchrun across machines made of namespaces, shaped links and CPU cgroups",
        description="Each machine is a network namespace with its own address, a shaped uplink and a CPU "
                    "cgroup; torchrun on each meets the others through the c10d rendezvous. Give a qtd CONFIG "
                    "(each machine runs -m qtd.train), or a torchrun target after --.")
    run.add_argument("config", nargs="?", help="qtd config: every machine runs `-m qtd.train --config CONFIG`")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key (repeatable)")
    run.add_argument("--machines", type=int, help="machines (default: topology.nodes / --nproc-per-node)")
    run.add_argument("--nproc-per-node", type=int, default=1, help="processes per machine (default 1)")
    run.add_argument("--cpu-share", metavar="S[,S...]",
                     help="cores per machine, fixed: one value for all or one per machine (e.g. 0.5,0.25,0.1)")
    run.add_argument("--cpu-share-range", metavar="LOW,HIGH",
                     help="redraw each machine's share from Uniform(LOW, HIGH) cores every --redraw-s seconds")
    run.add_argument("--redraw-s", type=float, default=5.0, help="seconds between redraws (default 5)")
    run.add_argument("--cpu-seed", type=int, default=0, help="seed of the redrawn shares (default 0)")
    run.add_argument("--cpu-period-ms", type=float, default=20.0,
                     help="cfs period in ms (default 20; the quota is share x period, at least 1 ms)")
    run.add_argument("--startup-share", type=float, default=1.0,
                     help="cores per machine until its --throttle-after file is written (default 1; 0: no limit)")
    run.add_argument("--cpu-weight", type=float, default=None,
                     help="the run's CPU weight per process against other work on the box while the quotas "
                          "together fit in its cores (default 4, so the shares hold on a busy box; 1 otherwise)")
    run.add_argument("--uplink-mbit", metavar="R[,R...]",
                     help="uplink rate per machine in Mbit/s, one for all or one per machine ('-': unshaped)")
    run.add_argument("--pair-mbit", action="append", default=[], metavar="A-B=R",
                     help="rate between machines A and B in Mbit/s, both ways, within the uplinks (repeatable)")
    run.add_argument("--throttle-after", metavar="PATH",
                     help="throttle a machine once this file gets its first bytes in this run ({machine}, {rank} "
                          "are filled in); default with CONFIG: RUN_DIR/nodes/node_{rank:03d}.jsonl, written "
                          "after the node's first iteration")
    run.add_argument("--release-after", metavar="PATH",
                     help="back to --startup-share once this file is written (default with CONFIG: RUN_DIR/summary.json, "
                          "so shutting down is not slowed)")
    run.add_argument("--report", type=Path, help="write what was measured here (default with CONFIG: "
                                                 "RUN_DIR/cluster.json)")
    run.add_argument("--probe-links", action="store_true", help="measure every uplink with a TCP transfer first")
    run.add_argument("--timeout-s", type=float, default=0.0, help="stop and remove everything after this long")
    run.add_argument("--port", type=int, default=29400, help="rendezvous port on machine 0 (default 29400)")

    cleanup = commands.add_parser("cleanup", help="remove namespaces, links and cgroups that dead runs left")
    cleanup.add_argument("--force", action="store_true", help="also remove runs whose harness still runs")
    cleanup.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    commands.add_parser("check", help="say whether this machine can run a one-box cluster")
    return parser


def cluster_command(argv: Sequence[str]) -> int:
    argv = list(argv)
    target: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, target = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    if args.action == "cleanup":
        return cleanup_command(args.force, args.dry_run)
    if args.action == "check":
        return check_command()
    return run_command_line(args, target)


def run_command_line(args: argparse.Namespace, target: list[str]) -> int:
    from .runner import ClusterRun, Target

    if bool(args.config) == bool(target):
        raise ConfigError("qtd cluster run needs either a qtd CONFIG or a torchrun target after -- "
                          "(e.g. `-- script.py --flag`), not both and not neither")
    if args.overrides and not args.config:
        raise ConfigError("--set applies to a qtd CONFIG; pass a script's own arguments after --")
    nproc = args.nproc_per_node
    if nproc < 1:
        raise ConfigError(f"--nproc-per-node {nproc} is not allowed: use a whole number >= 1")
    ready, release, report = args.throttle_after, args.release_after, args.report
    if args.config:
        from ..config import load_config
        from ..topology import build_topology

        config = load_config(args.config, args.overrides)
        build_topology(config.topology)
        nodes = config.topology.nodes
        machines = args.machines if args.machines is not None else max(nodes // nproc, 1)
        if machines * nproc != nodes:
            raise ConfigError(f"topology.nodes={nodes} but {machines} machines x {nproc} processes = "
                              f"{machines * nproc}: one process per graph node (set --machines, --nproc-per-node "
                              f"or --set topology.nodes={machines * nproc})")
        out = Path(config.run.out_dir)
        ready = ready or str(out / "nodes" / "node_{rank:03d}.jsonl")
        release = release or str(out / "summary.json")
        report = report or out / "cluster.json"
        argv = ["-m", "qtd.train", "--config", args.config, *sum((["--set", o] for o in args.overrides), [])]
    else:
        if args.machines is None:
            raise ConfigError("--machines is needed with a torchrun target (how many machines to start)")
        machines = args.machines
        argv = target
    spec = build_spec(args, machines)
    for option, template in (("--throttle-after", ready), ("--release-after", release)):
        try:
            if template:
                template.format(machine=0, rank=0)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"{option} {template!r}: use only {{machine}} and {{rank}} as placeholders "
                              f"({exc})") from None
    if args.timeout_s < 0 or not 1 <= args.port <= 65535:
        raise ConfigError("--timeout-s must be >= 0 and --port in 1..65535")
    run = ClusterRun(spec, Target(tuple(argv), ready, report, release), port=args.port, timeout_s=args.timeout_s,
                     probe_links=args.probe_links)
    return run.run()


def build_spec(args: argparse.Namespace, machines: int) -> ClusterSpec:
    if not 1 <= machines <= 150:
        raise ConfigError(f"--machines {machines} is not allowed: use 1..150")
    if args.cpu_share and args.cpu_share_range:
        raise ConfigError("give --cpu-share (fixed shares) or --cpu-share-range (redrawn shares), not both")
    period_us = round(args.cpu_period_ms * 1000)
    if args.cpu_share:
        cpu = CpuModel("fixed", shares=parse_numbers("--cpu-share", args.cpu_share, machines), period_us=period_us)
    elif args.cpu_share_range:
        low, high = parse_numbers("--cpu-share-range", args.cpu_share_range, 2)
        cpu = CpuModel("uniform", low=low, high=high, redraw_s=args.redraw_s, seed=args.cpu_seed,
                       period_us=period_us)
    else:
        cpu = CpuModel("unlimited", period_us=period_us)
    uplinks = (parse_numbers("--uplink-mbit", args.uplink_mbit, machines, highest=MAX_RATE_MBIT, allow_none=True)
               if args.uplink_mbit else (None,) * machines)
    links = LinkModel(uplink_mbit=uplinks, pair_mbit=parse_pairs(args.pair_mbit))
    startup = None if args.startup_share == 0 else args.startup_share
    return ClusterSpec(machines=machines, nproc_per_node=args.nproc_per_node, cpu=cpu, links=links,
                       startup_share=startup, cpu_weight=args.cpu_weight)


def cleanup_command(force: bool, dry_run: bool) -> int:
    from .registry import leftovers, read_state, remove_run, run_objects
    from .system import require_available

    require_available()
    dead, live = leftovers()
    for run_id in live:
        state = read_state(run_id)
        owner = f"harness pid {state.pid}" if state else "a live harness"
        if not force:
            print(f"{run_id}: still running ({owner}); left alone (--force removes it)")
    targets = dead + (live if force else [])
    if not targets:
        print("nothing to remove" + (" (only live runs)" if live else ""))
        return 0
    failed = False
    for run_id in targets:
        objects = run_objects(run_id)
        if dry_run:
            print(f"{run_id}: would remove {', '.join(objects) or 'processes only'}")
            continue
        problems = remove_run(run_id)
        if problems:
            failed = True
            print(f"{run_id}: could not remove {', '.join(problems)}", file=sys.stderr)
        else:
            print(f"{run_id}: removed {', '.join(objects) or 'its processes'}")
    return 1 if failed else 0


def check_command() -> int:
    from .registry import claim_run_id, remove_run
    from .system import probe_kernel, require_available

    require_available()
    state = claim_run_id("qtd cluster check")
    try:
        probe_kernel(state.run_id)
    finally:
        remove_run(state.run_id)
    print("qtd cluster: this machine can run a one-box cluster (root, iproute2, cgroup v1 cpu/cpuacct, "
          "network namespaces, veth, bridge, htb)")
    return 0
