"""`python -m qtd.engine.torchrun [torchrun arguments]`: torchrun, ending a failed run with one line.

Takes exactly torchrun's arguments and runs torchrun's own launcher in this process. Where torchrun
would end a failed run with its Python traceback (ChildFailedError, or a rendezvous error on a
multi-machine start), this prints one ``qtd: error:`` line naming the failed node and exits non-zero;
the node's own message is already above it. A torchrun argument it would refuse with a bare
AssertionError or ValueError (``--max-restarts -1``, ``--nproc-per-node 0``) or a usage block is one line
too, before anything starts. `qtd launch` and the scripts in launch/ start runs this way.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Sequence

from ..echo import cut, shown


def _problem(args) -> str | None:
    """What torchrun would refuse with a bare AssertionError or ValueError, as one sentence naming the flag."""
    if args.max_restarts < 0:
        return f"--max-restarts={args.max_restarts} is not allowed: give a number of restarts >= 0"
    nproc = str(args.nproc_per_node)
    if nproc.lstrip("-").isdigit():
        if int(nproc) < 1:
            return f"--nproc-per-node={shown(nproc)} is not allowed: give a number of processes >= 1"
    elif nproc not in ("auto", "cpu", "gpu", "xpu"):
        return f"--nproc-per-node={shown(nproc)} is not allowed: give a number, or auto, cpu or gpu"
    low, sep, high = str(args.nnodes).partition(":")
    try:
        low_n = int(low)
        high_n = int(high) if sep else low_n
    except ValueError:
        return f"--nnodes={shown(args.nnodes)} is not allowed: give a number of machines N or a range MIN:MAX"
    if not 0 < low_n <= high_n:
        return f"--nnodes={shown(args.nnodes)} is not allowed: give N >= 1, or MIN:MAX with 1 <= MIN <= MAX"
    return None


def parse_torchrun_args(argv: Sequence[str]):
    """torchrun's arguments, checked; a bad one prints one ``qtd: error:`` line and exits with code 2."""
    from torch.distributed.run import get_args_parser

    parser = get_args_parser()

    def one_line_error(message: str):  # instead of argparse's usage block
        print(f"qtd: error: {cut(message, 300)} (see torchrun --help)", file=sys.stderr, flush=True)
        sys.exit(2)

    parser.error = one_line_error
    args = parser.parse_args(list(argv))
    problem = _problem(args)
    if problem is not None:
        one_line_error(problem)
    return args


def _how(failure) -> str:
    return (f"was killed by {failure.signal_name()}" if failure.exitcode < 0
            else f"exited with code {failure.exitcode}")


def failure_summary(failures: dict, first: tuple) -> str:
    """Which node caused the failure: the one the failed nodes blamed (each wrote whom, see qtd.train),
    else the first to fail."""
    votes = Counter(f.error_file_data.get("qtd_culprit") for f in failures.values()
                    if isinstance(f.error_file_data, dict) and f.error_file_data.get("qtd_culprit") is not None)
    if votes:
        culprit = min(votes, key=lambda node: (-votes[node], node))
        named_by = sorted(rank for rank, f in failures.items()
                          if isinstance(f.error_file_data, dict) and f.error_file_data.get("qtd_culprit") == culprit)
        how = _how(failures[culprit]) if culprit in failures else "stalled or died"
        return (f"node {culprit} {how} (named by node{'s' if len(named_by) != 1 else ''} "
                f"{', '.join(map(str, named_by))}; their messages are above)")
    rank, failure = first
    others = len(failures) - 1
    also = f"; {others} other node{'s' if others != 1 else ''} stopped with it" if others else ""
    said = "it left no message" if failure.exitcode < 0 else "its own message is above"
    return f"node {rank} {_how(failure)} ({said}){also}"


def run_torchrun(argv: Sequence[str]) -> int:
    """Run torchrun with ``argv``; 0 when every node finished, 1 (after one message) when the run failed."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.run import run

    args = parse_torchrun_args(argv)
    try:
        run(args)
    except (AssertionError, ValueError) as exc:  # torchrun checks its settings with these, before any node runs
        details = cut(str(exc)) or "no details"
        print(f"qtd: error: torchrun refused its settings ({type(exc).__name__}: {details}); check the launch "
              "arguments (torchrun --help)", file=sys.stderr, flush=True)
        return 2
    except ChildFailedError as exc:
        restarts = f" after {args.max_restarts} restart{'s' if args.max_restarts != 1 else ''}" if args.max_restarts else ""
        print(f"qtd: error: the run failed{restarts}: {failure_summary(exc.failures, exc.get_first_failure())}",
              file=sys.stderr, flush=True)
        return 1
    except SignalException as exc:  # Ctrl-C or a scheduler's SIGTERM: torchrun has stopped the nodes
        print(f"qtd: stopped by {exc.sigval.name}", file=sys.stderr, flush=True)
        return 128 + int(exc.sigval)
    except RendezvousError as exc:
        print(f"qtd: error: the machines could not meet at the rendezvous ({type(exc).__name__}: "
              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no details'}); start the same command "
              "on every machine, with an endpoint they all reach", file=sys.stderr, flush=True)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    try:
        code = run_torchrun(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        print("qtd: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
