"""One worker's step in parameter-server mode: gradient -> compress -> all-gather -> decode -> AMSGrad.

Every rank is a worker and holds a replica of the server state (theta, m, v, v_hat). Each step, worker i
computes g_i at theta, sends c_i = C(g_i + e_i) (keeping e_i <- e_i + g_i - c_i when error feedback is on),
every rank receives every c_j through one all-gather, decodes them in rank order into
g_bar = (1/n) sum_j c_j and applies the same AMSGrad step. Identical bytes in, identical operations, so
the replicas stay bit-identical; :meth:`PSStep.check_replicas` verifies it.
Compressor ``none`` is dense AMSGrad: the float32 gradients are averaged with one all-reduce.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np
from torch import Tensor

from ...algorithms import lr_at
from ...comm import World
from ...compress import BlockSignCodec, TopKCodec
from ...config import PSConfig
from ...models import FlatModel
from .base import GradientSource, Step, StepStats, stats_from
from .ps_server import (ReplicatedServer, ServerTraffic, _hash_weights, make_codec, state_hash,  # noqa: F401
                        topk_count)  # (the hash and topk_count re-exported: tests and references import them from here)


def build_codec(ps: PSConfig, flat: FlatModel) -> TopKCodec | BlockSignCodec | None:
    """The worker's compressor for ``ps.compressor`` (None: dense all-reduce). Block-Sign blocks are layers."""
    return make_codec(ps.compressor, flat.params, [size for _, _, size in flat.named_slices()], ps.k_ratio,
                      ps.value_bits, ps.error_feedback)


class PSStep(ServerTraffic, Step):
    """A worker's replica of the server and its compressor; ``step`` is collective (every rank calls it).
    ``wait_s`` in its stats is the time in the all-gather (or all-reduce), decoding excluded."""

    def __init__(self, world: World, flat: FlatModel, gradients: GradientSource,
                 codec: TopKCodec | BlockSignCodec | None, ps: PSConfig, samples_per_epoch: int) -> None:
        self.world, self.flat, self.gradients, self.codec, self.ps = world, flat, gradients, codec, ps
        self.samples_per_epoch = samples_per_epoch  # the whole training set: epochs = steps * n * B / this
        self.last_lr = ps.lr
        self.server = ReplicatedServer(world, flat.params, codec)
        self.state = self.server.state
        self.message_nbytes, self.wire_nbytes = self.server.message_nbytes, self.server.wire_nbytes
        if codec is not None:
            self.gathered = self.server.gathered

    def step(self, iteration: int) -> StepStats:
        start = time.monotonic()
        result, speed = self.gradients.compute(iteration)
        ps = self.ps
        lr = lr_at(self.state.step, ps.lr, ps.warmup_steps, ps.decay_every, ps.decay_gamma)
        wait_s = self.server.step(self.flat.params, self.flat.grads, iteration, lr, ps.beta1, ps.beta2, ps.eps)
        self.last_lr = lr
        if ps.check_every and (iteration + 1) % ps.check_every == 0:
            self.check_replicas(iteration + 1)
        return stats_from(result, speed, wait_s, time.monotonic() - start,
                          log={"lr": lr, "upload_bytes": self.upload_bytes},
                          scalars={"node/lr": lr, "node/upload_bytes": self.upload_bytes})

    def restored(self, iteration: int) -> None:
        self.check_replicas(iteration)

    def before_final_checkpoint(self, iteration: int) -> None:
        self.check_replicas(iteration)

    @property
    def epoch(self) -> float:
        return self.state.step * self.ps.batch_size * self.world.size / self.samples_per_epoch

    def eval_values(self) -> dict[str, float]:
        return {"upload_bytes": float(self.upload_bytes)}

    def eval_columns(self, table: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return {"epoch": self.epoch, "upload_bytes": int(table["upload_bytes"].sum()), "lr": self.last_lr}

    def eval_scalars(self, columns: Mapping[str, Any]) -> dict[str, float]:
        return {"comm/upload_bytes_total": columns["upload_bytes"], "train/lr": columns["lr"],
                "train/epoch": columns["epoch"]}

    def summary_values(self, table: Mapping[str, np.ndarray]) -> dict[str, Any]:
        ps = self.ps
        return {
            "epochs": self.epoch, "upload_bytes": int(table["upload_bytes"].sum()),
            "compressor": ps.compressor, "error_feedback": ps.error_feedback and ps.compressor != "none",
            "params": self.flat.numel, "k": self.codec.k if ps.compressor == "topk" else None,
            "value_bits": ps.value_bits if ps.compressor == "topk" else 32,
            "upload_bytes_per_step": self.message_nbytes,  # one worker's message, headers included
            "wire_bytes_per_step": self.wire_nbytes,  # what the collective moves out of one worker
            "upload_bytes_per_node": [int(v) for v in table["upload_bytes"]],
        }

    def checksums(self) -> Tensor:
        """int64 hashes of theta, m, v, v_hat and the step count: equal on every rank while in sync."""
        return self.server.checksums(self.flat.params)

    def check_replicas(self, step: int) -> None:
        """Collective: all-gather every rank's checksums; raise ReplicaDriftError on every rank if any differ."""
        self.server.check_replicas(self.flat.params, step, "restart from a checkpoint written before the drift "
                                   "(run.resume=auto takes the newest; keep ps.check_every <= "
                                   "run.checkpoint_every so it was checked)")

    def state_dict(self) -> dict[str, Any]:
        return self.server.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.server.load_state_dict(state, "the checkpoint was written with other mode, ps.* or model settings; "
                                    "use run.resume=never or another run.out_dir")
