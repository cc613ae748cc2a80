"""The replicated AMSGrad server of parameter-server mode, in one place: compress -> all-gather -> decode ->
AMSGrad, the replica check and the state that checkpoints it.

The engine's parameter-server step (:class:`.ps.PSStep`) and the library's optimizer
(:class:`qtd.api.TopKAMSGrad`) both step through :class:`ReplicatedServer`, so both send the same messages
and take bit for bit the same step on the same gradients.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch
from torch import Tensor

from ...algorithms import AMSGradState, amsgrad_step
from ...comm import World, all_gather_bytes, all_reduce_sum, ring_allgather_bytes, ring_allreduce_bytes
from ...compress import BlockSignCodec, TopKCodec
from ...errors import CheckpointError, ReplicaDriftError

Codec = TopKCodec | BlockSignCodec


def topk_count(ratio: float, numel: int) -> int:
    """k = round(ratio * numel), at least 1 and at most numel."""
    return max(1, min(numel, round(ratio * numel)))


def make_codec(compressor: str, like: Tensor, block_sizes: Sequence[int], k_ratio: float = 0.01,
               value_bits: int = 32, error_feedback: bool = True) -> Codec | None:
    """The worker's compressor: ``topk`` (k = k_ratio * p), ``blocksign`` (one block per entry of
    ``block_sizes``: the layers) or ``none`` (None: dense all-reduce)."""
    if compressor == "topk":
        return TopKCodec(like, topk_count(k_ratio, like.numel()), value_bits, error_feedback)
    if compressor == "blocksign":
        return BlockSignCodec(like, block_sizes, error_feedback)
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


class ServerTraffic:
    """The byte counters of an object holding a :class:`ReplicatedServer` as ``server`` (a PS step, the optimizer)."""

    server: "ReplicatedServer"

    @property
    def bytes_sent(self) -> int:
        """What the collectives moved out of this worker so far (ring all-gather or all-reduce)."""
        return self.server.bytes_sent

    @property
    def upload_bytes(self) -> int:
        """This worker's messages so far, headers included (a classic parameter server's upload)."""
        return self.server.upload_bytes


class ReplicatedServer:
    """A worker's compressor and its replica of the server state (m, v, v_hat, step) for a flat theta of
    ``numel`` float32 values. :meth:`step` and :meth:`check_replicas` are collective (every rank calls them)."""

    def __init__(self, world: World, like: Tensor, codec: Codec | None) -> None:
        self.world, self.codec = world, codec
        self.state = AMSGradState.zeros_like(like)
        self.mean_grad = torch.zeros_like(like)
        numel = like.numel()
        if codec is None:
            self.message_nbytes = numel * like.element_size()  # raw float32, as DDP sends it
            self.wire_nbytes = ring_allreduce_bytes(self.message_nbytes, world.size)
        else:
            self.message_nbytes = codec.message_nbytes
            self.wire_nbytes = ring_allgather_bytes(codec.message_nbytes, world.size)
            self.send = torch.empty(codec.message_nbytes, dtype=torch.uint8, device=like.device)
            self.gathered = torch.empty(world.size, codec.message_nbytes, dtype=torch.uint8, device=like.device)
        self.upload_bytes = 0  # totals of this worker: its compressed messages, headers included
        self.bytes_sent = 0  # what the collectives moved out of this worker
        self._hash_weights: Tensor | None = None

    def mean_gradient(self, grad: Tensor, iteration: int) -> float:
        """Collective: ``mean_grad`` <- (1/n) sum_j C(g_j + e_j), decoded in rank order (the same sum on every
        replica). Returns the seconds spent in the collective."""
        what = f"gradient exchange at step {iteration}"
        if self.codec is None:
            start = time.monotonic()
            self.mean_grad.copy_(grad)
            all_reduce_sum(self.mean_grad, self.world, what)
            wait_s = time.monotonic() - start
        else:
            self.codec.encode(grad, self.world.rank, iteration, out=self.send)
            start = time.monotonic()
            all_gather_bytes(self.send, self.world, what, out=self.gathered)
            wait_s = time.monotonic() - start
            self.mean_grad.zero_()
            for sender in range(self.world.size):
                self.codec.decode_add(self.gathered[sender], self.mean_grad, sender=sender, iteration=iteration)
        self.mean_grad.div_(self.world.size)
        return wait_s

    def step(self, theta: Tensor, grad: Tensor, iteration: int, lr: float, beta1: float, beta2: float,
             eps: float) -> float:
        """Collective: one server step of theta (in place) from this worker's gradient; returns the wait."""
        wait_s = self.mean_gradient(grad, iteration)
        with torch.no_grad():
            amsgrad_step(theta, self.mean_grad, self.state, lr, beta1, beta2, eps)
        self.upload_bytes += self.message_nbytes
        self.bytes_sent += self.wire_nbytes
        return wait_s

    def checksums(self, theta: Tensor) -> Tensor:
        """int64 hashes of theta, m, v, v_hat and the step count: equal on every rank while in sync."""
        if self._hash_weights is None:
            self._hash_weights = _hash_weights(theta.numel(), theta.device)
        w, s = self._hash_weights, self.state
        hashes = [state_hash(t, w) for t in (theta, s.m, s.v, s.v_hat)]
        return torch.stack(hashes + [torch.tensor(s.step, dtype=torch.int64, device=w.device)])

    def check_replicas(self, theta: Tensor, step: int, restart_hint: str) -> None:
        """Collective: all-gather every rank's checksums; raise ReplicaDriftError on every rank if any differ."""
        mine = self.checksums(theta)
        table = all_gather_bytes(mine.view(torch.uint8), self.world, f"replica check at step {step}")
        table = table.view(torch.int64)
        differ = [r for r in range(self.world.size) if not torch.equal(table[r], table[0])]
        if differ:
            names = ", ".join(str(r) for r in differ)
            raise ReplicaDriftError(
                f"replica check after step {step}: the server state (theta, m, v, v_hat) of rank(s) {names} "
                f"differs from rank 0's, so the replicas drifted apart and no longer train one model. Every rank "
                f"must run the same qtd and torch versions on the same kind of device; {restart_hint}")

    def state_dict(self) -> dict[str, Any]:
        s = self.state
        state = {"m": s.m.cpu().clone(), "v": s.v.cpu().clone(), "v_hat": s.v_hat.cpu().clone(),
                 "step": torch.tensor(s.step, dtype=torch.int64),
                 "upload_bytes": torch.tensor(self.upload_bytes, dtype=torch.int64),
                 "bytes_sent": torch.tensor(self.bytes_sent, dtype=torch.int64)}
        if self.codec is not None:
            state.update({f"codec_{k}": v for k, v in self.codec.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, Any], what: str) -> None:
        """CheckpointError naming ``what`` (the settings that must match) when ``state`` does not fit."""
        s = self.state
        try:
            for name in ("m", "v", "v_hat"):
                if state[name].shape != s.m.shape:
                    raise ValueError(f"{name} has shape {tuple(state[name].shape)}")
                getattr(s, name).copy_(state[name].to(s.m.device))
            s.step = int(state["step"])
            self.upload_bytes, self.bytes_sent = int(state["upload_bytes"]), int(state["bytes_sent"])
            if self.codec is not None:
                self.codec.load_state_dict({k[len("codec_"):]: v for k, v in state.items()
                                            if k.startswith("codec_")})
        except (KeyError, ValueError, RuntimeError, AttributeError) as exc:
            raise CheckpointError(f"the parameter-server state does not fit this run ({exc!r}): {what}") from None
