"""The simulator's run directory, laid out like a real run's (README: "What a run writes").

``config.yaml``, ``metrics.jsonl`` (one row per evaluation, ``time_s`` in virtual seconds),
``tensorboard/global``, per-node ``nodes/node_XXX.jsonl`` and ``tensorboard/node_XXX`` (optional: a
sweep of many runs can leave them out), ``summary.json``, ``sim_models.pt`` (every node's final model) and
``model.pt`` (the network-average model's ``state_dict``, as real runs write it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from ..config import Config, dump_config, save_config
from ..engine.points import EvalPoint, eval_scalars
from ..engine.run_files import clear_run_files
from ..metrics import JsonlWriter, ScalarLogger, TensorBoardLogger, write_json_atomic
from ..metrics.model_file import MODEL_FILE, write_model_file

NODE_TB_KEYS = ("train_loss", "samples", "compute_s", "wait_s", "bytes_sent", "speed")


class SimRecorder:
    """Writes what a real run writes; with ``write=False`` it writes nothing (tests, in-memory sweeps)."""

    def __init__(self, config: Config, write: bool = True, node_logs: bool = True) -> None:
        self.out = Path(config.run.out_dir)
        self.write = write
        self.node_logs = write and node_logs
        self._metrics: JsonlWriter | None = None
        self._global: ScalarLogger = ScalarLogger()
        self._node_jsonl: list[JsonlWriter] = []
        self._node_tb: list[ScalarLogger] = []
        if not write:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        clear_run_files(self.out)  # a simulation always starts over
        text = dump_config(config)
        save_config(config, self.out / "config.yaml")
        self._metrics = JsonlWriter(self.out / "metrics.jsonl", truncate=True)
        self._global = TensorBoardLogger(self.out / "tensorboard" / "global")
        self._global.text("config", "```\n" + text + "\n```")
        if self.node_logs:
            for i in range(config.topology.nodes):
                self._node_jsonl.append(JsonlWriter(self.out / "nodes" / f"node_{i:03d}.jsonl", truncate=True))
                self._node_tb.append(TensorBoardLogger(self.out / "tensorboard" / f"node_{i:03d}", flush_secs=60))

    def node(self, node: int, step: int, row: Mapping[str, Any]) -> None:
        """One node's row after its ``step``-th iteration (keys as a real node's log)."""
        if not self.node_logs:
            return
        self._node_jsonl[node].write(row)
        self._node_tb[node].scalars({f"node/{key}": row[key] for key in NODE_TB_KEYS
                                     if row.get(key) is not None}, step)

    def evaluation(self, point: EvalPoint) -> None:
        if self._metrics is None:
            return
        self._metrics.write(point.row())
        self._global.scalars(eval_scalars(point, time_tag="time/virtual_s"), point.iteration)

    def finish(self, summary: Mapping[str, Any], models: torch.Tensor, hparams: Mapping[str, Any],
               model_state: Mapping[str, torch.Tensor] | None = None) -> None:
        if not self.write:
            return
        torch.save({"params": models.detach().cpu().clone(), "average": models.detach().mean(dim=0).cpu()},
                   self.out / "sim_models.pt")
        if model_state is not None:
            write_model_file(model_state, self.out / MODEL_FILE)
        write_json_atomic(self.out / "summary.json", summary)
        self._global.hparams(hparams, {"hparam/eval_loss": summary["eval_loss"],
                                       "hparam/eval_accuracy": summary["eval_accuracy"],
                                       "hparam/time_s": summary["time_s"]})

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
        self._global.close()
        for writer in self._node_jsonl:
            writer.close()
        for logger in self._node_tb:
            logger.close()
