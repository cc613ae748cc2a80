"""Whether a run may start in its run directory, decided before any work: usable by the launcher (no
torch here) and by every node."""

from __future__ import annotations

from ..algorithms import spec_for
from ..config import Config
from ..metrics.layout import complete_iterations


def resume_refusal(config: Config, nodes: int) -> str | None:
    """Why this run cannot start in run.out_dir, or None: a run that does not resume (asynchronous nodes
    stop at different iterations) over complete checkpoints with run.resume=auto would silently discard them."""
    spec = spec_for(config.mode, config.algorithm.name)
    if config.run.resume == "auto" and not spec.runner.resumes and complete_iterations(config.run.out_dir, nodes):
        return (f"run.out_dir={config.run.out_dir!r} holds checkpoints, and algorithm.name={spec.name} does not "
                "resume (its nodes stop at different iterations): set run.resume=never to start over there, "
                "or choose another run.out_dir")
    return None
