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
import torch
from torch import Tensor

from ...algorithms import AMSGradState, amsgrad_step, lr_at
from ...comm import World, all_gather_bytes, all_reduce_sum, ring_allgather_bytes, ring_allreduce_bytes
from ...compress import BlockSignCodec, TopKCodec
from ...config import PSConfig
from ...errors import CheckpointError, ReplicaDriftError
from ...models import FlatModel
from .base import GradientSource, Step, StepStats, stats_from


def topk_count(ratio: float, numel: int) -> int:
    """k = round(ratio * numel), at least 1 and at most numel."""
    return max(1, min(numel, round(ratio * numel)))


def build_codec(ps: PSConfig, flat: FlatModel) -> TopKCodec | BlockSignCodec | None:
    """The worker's compressor for ``ps.compressor`` (None: dense all-reduce). Block-Sign blocks are layers."""
    if ps.compressor == "topk":
        return TopKCodec(flat.params, topk_count(ps.k_ratio, flat.numel), ps.value_bits, ps.error_feedback)
    if ps.compressor == "blocksign":
        return BlockSignCodec(flat.params, [size for _, _, size in flat.named_slices()], ps.error_feedback)
    return None


def _hash_weights(numel: int, device: torch.device) -> Tensor:
    """Fixed odd multipliers below 2**31, one per position (a Knuth multiplicative sequence)."""
    positions = torch.arange(numel, dtype=torch.int64, device=device)
    return ((positions * 2654435761 + 40503) % 2**31) | 1


def state_hash(t: Tensor, weights: Tensor) -> Tensor:
    """A position-weighted sum of the float32 bit patterns, mod 2**64: equal bits give equal hashes in any
    summation order (integer addition wraps associatively); a single flipped bit changes it."""
    bits = t.detach().reshape(-1).contiguous().view(torch.int32).to(torch.int64)
    return (bits * weights).sum()


class PSStep(Step):
    """A worker's replica of the server and its compressor; ``step`` is collective (every rank calls it).
    ``wait_s`` in its stats is the time in the all-gather (or all-reduce), decoding excluded."""

    def __init__(self, world: World, flat: FlatModel, gradients: GradientSource,
                 codec: TopKCodec | BlockSignCodec | None, ps: PSConfig, samples_per_epoch: int) -> None:
        self.world, self.flat, self.gradients, self.codec, self.ps = world, flat, gradients, codec, ps
        self.samples_per_epoch = samples_per_epoch  # the whole training set: epochs = steps * n * B / this
        self.last_lr = ps.lr
        self.state = AMSGradState.zeros_like(flat.params)
        self.mean_grad = torch.zeros_like(flat.params)
        if codec is None:
            self.message_nbytes = flat.numel * flat.grads.element_size()  # raw float32, as DDP sends it
            self.wire_nbytes = ring_allreduce_bytes(self.message_nbytes, world.size)
        else:
            self.message_nbytes = codec.message_nbytes
            self.wire_nbytes = ring_allgather_bytes(codec.message_nbytes, world.size)
            self.send = torch.empty(codec.message_nbytes, dtype=torch.uint8, device=flat.device)
            self.gathered = torch.empty(world.size, codec.message_nbytes, dtype=torch.uint8, device=flat.device)
        self.upload_bytes = 0  # totals of this worker: its compressed messages, headers included
        self._bytes_sent = 0  # what the collectives moved out of this worker
        self._hash_weights: Tensor | None = None

    @property
    def bytes_sent(self) -> int:
        return self._bytes_sent

    def step(self, iteration: int) -> StepStats:
        start = time.monotonic()
        result, speed = self.gradients.compute(iteration)
        what = f"gradient exchange at step {iteration}"
        if self.codec is None:
            wait_start = time.monotonic()
            self.mean_grad.copy_(self.flat.grads)
            all_reduce_sum(self.mean_grad, self.world, what)
            wait_s = time.monotonic() - wait_start
        else:
            self.codec.encode(self.flat.grads, self.world.rank, iteration, out=self.send)
            wait_start = time.monotonic()
            all_gather_bytes(self.send, self.world, what, out=self.gathered)
            wait_s = time.monotonic() - wait_start
            self.mean_grad.zero_()
            for sender in range(self.world.size):  # rank order: the same sum on every replica
                self.codec.decode_add(self.gathered[sender], self.mean_grad, sender=sender, iteration=iteration)
        self.mean_grad.div_(self.world.size)
        ps = self.ps
        lr = lr_at(self.state.step, ps.lr, ps.warmup_steps, ps.decay_every, ps.decay_gamma)
        with torch.no_grad():
            amsgrad_step(self.flat.params, self.mean_grad, self.state, lr, ps.beta1, ps.beta2, ps.eps)
        self.upload_bytes += self.message_nbytes
        self._bytes_sent += self.wire_nbytes
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
        if self._hash_weights is None:
            self._hash_weights = _hash_weights(self.flat.numel, self.flat.device)
        w, s = self._hash_weights, self.state
        hashes = [state_hash(t, w) for t in (self.flat.params, s.m, s.v, s.v_hat)]
        return torch.stack(hashes + [torch.tensor(s.step, dtype=torch.int64, device=w.device)])

    def check_replicas(self, step: int) -> None:
        """Collective: all-gather every rank's checksums; raise ReplicaDriftError on every rank if any differ."""
        mine = self.checksums()
        table = all_gather_bytes(mine.view(torch.uint8), self.world, f"replica check at step {step}")
        table = table.view(torch.int64)
        differ = [r for r in range(self.world.size) if not torch.equal(table[r], table[0])]
        if differ:
            names = ", ".join(str(r) for r in differ)
            raise ReplicaDriftError(
                f"replica check after step {step}: the server state (theta, m, v, v_hat) of rank(s) {names} "
                f"differs from rank 0's, so the replicas drifted apart and no longer train one model. Every rank "
                f"must run the same qtd and torch versions on the same kind of device; restart from a checkpoint "
                f"written before the drift (run.resume=auto takes the newest; keep ps.check_every <= "
                f"run.checkpoint_every so it was checked)")

    def state_dict(self) -> dict[str, Any]:
        s = self.state
        state = {"m": s.m.cpu().clone(), "v": s.v.cpu().clone(), "v_hat": s.v_hat.cpu().clone(),
                 "step": torch.tensor(s.step, dtype=torch.int64),
                 "upload_bytes": torch.tensor(self.upload_bytes, dtype=torch.int64),
                 "bytes_sent": torch.tensor(self._bytes_sent, dtype=torch.int64)}
        if self.codec is not None:
            state.update({f"codec_{k}": v for k, v in self.codec.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        s = self.state
        try:
            for name in ("m", "v", "v_hat"):
                if state[name].shape != s.m.shape:
                    raise ValueError(f"{name} has shape {tuple(state[name].shape)}")
                getattr(s, name).copy_(state[name].to(self.flat.device))
            s.step = int(state["step"])
            self.upload_bytes, self._bytes_sent = int(state["upload_bytes"]), int(state["bytes_sent"])
            if self.codec is not None:
                self.codec.load_state_dict({k[len("codec_"):]: v for k, v in state.items()
                                            if k.startswith("codec_")})
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"the checkpoint's parameter-server state does not fit this run ({exc!r}): it was "
                                  f"written with other mode, ps.* or model settings; use run.resume=never or "
                                  f"another run.out_dir") from None
