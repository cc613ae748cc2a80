"""`python -m qtd.engine.torchrun [torchrun arguments]`: torchrun, ending a failed run with one line.

Takes exactly torchrun's arguments and runs torchrun's own launcher in this process. Where torchrun
would end a failed run with its Python traceback (ChildFailedError, or a rendezvous error on a
multi-machine start), this prints one ``qtd: error:`` line naming the failed node and exits non-zero;
the node's own message is already above it. `qtd launch` and the scripts in launch/ start runs this way.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Sequence


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
    from torch.distributed.run import parse_args, run

    args = parse_args(list(argv))
    try:
        run(args)
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
