"""Whether and where a run resumes, decided before any work, so that nothing is lost or mislabelled.

Every checkpoint carries the run's *settings*: every config key that changes what a run computes (all of
them but where it writes, how it reports, how often it checkpoints or evaluates, its time budget and
timeouts; ``run.iterations`` too where the step-size schedule does not depend on the horizon, so a
finished run can be trained on). A run resumes only from a checkpoint written with the same settings;
otherwise it stops with one line naming what differs. A run whose final checkpoint is there already is
complete: it says so and writes nothing. The launcher reads the same (node 0's newest file) before any
process starts; the nodes then agree collectively (:mod:`.driver`), falling back past damaged files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..algorithms import spec_for
from ..config import Config, ConfigError, config_to_dict
from ..errors import CheckpointError
from ..metrics.layout import complete_iterations, node_file

# keys that do not change what a run computes: where it writes, how it reports, when it checkpoints, evaluates
# or stops by time, how long a peer may be silent, where the data files are
NEUTRAL_KEYS = frozenset({"run.out_dir", "run.progress", "run.resume", "run.checkpoint_every", "run.eval_every",
                          "run.eval_every_s", "run.time_budget_s", "comm.timeout_s", "data.root", "data.download"})


def _flat(prefix: str, value: Any, into: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, child in value.items():
            _flat(f"{prefix}{key}.", child, into)
    else:
        into[prefix.rstrip(".")] = list(value) if isinstance(value, tuple) else value


def run_settings(config: Config) -> dict[str, Any]:
    """The config keys that change a run's results, as dotted key -> value."""
    flat: dict[str, Any] = {}
    _flat("", config_to_dict(config), flat)
    horizon_matters = config.mode == "decentralized" and config.algorithm.schedule == "paper"
    return {key: value for key, value in flat.items()
            if key not in NEUTRAL_KEYS and (key != "run.iterations" or horizon_matters)}


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def settings_mismatch(config: Config, saved_json: str | None, where: str) -> str | None:
    """One line naming what differs between ``config`` and the settings a checkpoint was written with."""
    current = run_settings(config)
    try:
        saved = json.loads(saved_json) if saved_json else None
    except (TypeError, ValueError):
        saved = None
    if not isinstance(saved, dict):
        return (f"{where} holds a checkpoint without readable run settings: set run.resume=never to start over "
                "there, or choose another run.out_dir")
    differ = sorted(k for k in set(saved) | set(current) if saved.get(k, "<unset>") != current.get(k, "<unset>"))
    if not differ:
        return None
    shown = "; ".join(f"{k}={_short(saved.get(k, '<unset>'))} there, {_short(current.get(k, '<unset>'))} here"
                      for k in differ[:4])
    more = f" (and {len(differ) - 4} more)" if len(differ) > 4 else ""
    return (f"{where} holds a run with other settings: {shown}{more}. Resuming it would mislabel its results: "
            "set run.resume=never to start over there (its files are removed first), or choose another run.out_dir")


def is_complete(config: Config, state: dict[str, Any], iteration: int) -> bool:
    """Whether a node's checkpoint is the final one of a run this config describes in full."""
    if not state.get("final"):
        return False
    if not spec_for(config.mode, config.algorithm.name).runner.resumes:
        return True  # an asynchronous run writes its one checkpoint when it ends
    budget = config.run.time_budget_s
    time_s = float(state.get("counters", {}).get("time_s", 0.0))
    return iteration >= config.run.iterations or bool(budget and time_s >= budget)


def completion_line(config: Config, iteration: int) -> str:
    return (f"qtd: run.out_dir={config.run.out_dir!r} already holds this run, complete (final checkpoint at "
            f"iteration {iteration}, summary.json): nothing to do. Set run.resume=never to run it again, or raise "
            "run.iterations to train on")


def check_resume(config: Config, nodes: int) -> str | None:
    """The launcher's look before it starts anything: None to go ahead, a line to print (and exit 0) when
    the run is complete already; ConfigError when resuming would mislabel results. Reads node 0's newest
    intact checkpoint (the nodes check their own files again when they start)."""
    if config.run.resume != "auto":
        return None
    from ..metrics.checkpoint import load_node_checkpoint  # torch only where there is something to read

    for iteration in reversed(complete_iterations(config.run.out_dir, nodes)):
        try:
            state = load_node_checkpoint(node_file(config.run.out_dir, iteration, 0), 0)
        except CheckpointError:
            continue  # damaged: the nodes fall back past it, and say so
        return resume_verdict(config, state, iteration)
    return None


def resume_verdict(config: Config, state: dict[str, Any], iteration: int) -> str | None:
    """The completion line, or None to resume; ConfigError when the settings differ or it cannot resume."""
    mismatch = settings_mismatch(config, state.get("settings"), f"run.out_dir={config.run.out_dir!r}")
    if mismatch:
        raise ConfigError(mismatch)
    if is_complete(config, state, iteration):
        return completion_line(config, iteration)
    spec = spec_for(config.mode, config.algorithm.name)
    if not spec.runner.resumes:
        raise ConfigError(f"run.out_dir={config.run.out_dir!r} holds checkpoints, and algorithm.name={spec.name} "
                          "does not resume (its nodes stop at different iterations): set run.resume=never to start "
                          "over there, or choose another run.out_dir")
    return None


def existing_summary(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return None
