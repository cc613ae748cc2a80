"""QuanTimed-DSGD in your own training loop: :class:`Decentralized`, used like ``DistributedDataParallel``.

Your script keeps its model, DataLoader, optimizer, scheduler, clipping and mixed precision. Per round:

    for rnd in dec.rounds(loader):      # posts Q(x_i) to the neighbours; the exchange runs meanwhile
        optimizer.zero_grad()
        for x, y in rnd:                 # your batches until the deadline T_d (or one batch)
            F.cross_entropy(model(x), y).backward()
        optimizer.step()                 # your optimizer, on the mean gradient
                                         # then: x <- x + eps * sum_j w_ij (z_j - x_sent)

The consensus step uses x_sent, the model as it was sent (before your optimizer step). With plain SGD at
lr = alpha * eps that is exactly the paper's update:
x - alpha eps g + eps (sum_j w_ij z_j - (1 - w_ii) x_sent) = (1 - eps + eps w_ii) x + eps sum_j w_ij z_j - alpha eps g.
The algorithm is a spec of the engine's registry (:func:`qtd.algorithms.library_spec`), the exchange is the
engine's (:class:`qtd.engine.steps.model_exchange.ModelExchange`: same wire format and byte counts), the
deadline rule is the engine's (:mod:`qtd.deadline`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor, nn

from ..algorithms import Runner, consensus_delta, library_spec
from ..comm import (PendingExchange, World, all_reduce_sum, broadcast, close_world, group_started, init_world,
                    ring_allreduce_bytes)
from ..config import TopologyConfig
from ..deadline import DeadlinePhase, DeadlineTimer, FixedBatchPhase, SpeedModel
from ..deadline.auto import AutoDeadline, seen_exchange_s
from ..engine.evaluate import gather_table
from ..engine.model_file import network_average_state, write_model_file
from ..engine.points import EvalPoint, eval_scalars
from ..engine.steps import node_scalars, stats_from
from ..compress.message_codec import GridCodec
from ..engine.steps.model_exchange import ModelExchange
from ..errors import ConfigError
from ..metrics import ScalarLogger, TensorBoardLogger
from ..topology import build_topology
from .batches import BatchStream
from .round import Round
from .tensors import TensorVector

BUFFER_MODES = ("average", "local")


def _fail(name: str, value: object, allowed: str) -> None:
    raise ConfigError(f"{name}={value!r} is not allowed: {allowed}")


def _seconds(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


class Decentralized:
    """Wrap ``module`` for decentralized training on the process group (joined from torchrun's environment,
    or the one this process started, or ``world``). Collective: every rank constructs it together.

    ``algorithm``: ``quantimed`` (deadline-bound, quantized), ``qdsgd`` (one batch, quantized), ``dsgd`` (one
    batch, 16/32-bit models, eps = 1) or ``allreduce_sgd`` (the mean gradient of all nodes, like DDP).
    ``bits``: 1..8, 16 or 32 (default 4; 16 for dsgd). ``block_size``: 0 (one quantization grid per message) or
    B, one grid per B elements (a multiple of 8, bits 1..8; 8 more bytes per block). ``eps``: the consensus step in (0, 1].
    ``deadline_s``: T_d of quantimed in seconds, or ``"auto"``: T_d tunes itself (the engine's rule,
    :mod:`qtd.deadline.auto`, with overlap): it starts at ``deadline_start_s`` and every ``deadline_window``
    rounds all nodes agree on the next one from what they measured (one all-reduce of a few numbers per node).
    ``topology``: a graph kind (``ring``, ``torus``, ``complete``, ``star``,
    ``exponential``, ``erdos_renyi``) with ``weights`` (``laplacian`` or ``metropolis``), or a
    :class:`qtd.config.TopologyConfig`. ``buffers``: ``average`` mixes the floating buffers (BatchNorm
    running statistics) with the neighbours' every round like the model, exactly (32-bit messages) and with
    eps = 1; ``local`` keeps each node's own. ``seed``: the quantization noise key (as ``run.seed``).
    ``speed``: emulated straggler speed V in samples/s, a number or a :class:`qtd.deadline.SpeedModel`.
    ``tensorboard``: a directory for the engine's TensorBoard tags (``node_XXX`` runs, ``global`` on rank 0).
    The model's parameters on all nodes start from rank 0's (``sync_start``), as with DDP.
    """

    def __init__(self, module: nn.Module, algorithm: str = "quantimed", *, bits: int | None = None,
                 eps: float = 0.5, deadline_s: float = 0.5, topology: str | TopologyConfig = "ring",
                 weights: str = "laplacian", buffers: str = "average", overlap: bool = True, seed: int = 0,
                 speed: SpeedModel | float | None = None, world: World | None = None,
                 tensorboard: str | Path | None = None, timeout_s: float = 60.0, sync_start: bool = True,
                 block_size: int = 0, deadline_start_s: float = 0.1, deadline_window: int = 10) -> None:
        self.spec = spec = library_spec(algorithm)
        self.gossip = spec.runner is Runner.GOSSIP
        self.bits = self._check(spec, bits, eps, deadline_s, buffers, speed)
        auto = spec.deadline_bound and deadline_s == "auto"
        if auto:
            self._check_auto(overlap, deadline_start_s, deadline_window)
        self._check_block_size(block_size, self.bits, self.gossip)
        self._owns_group = world is None and not group_started()
        self.world = world = world if world is not None else init_world(timeout_s=timeout_s)
        self.module, self.buffers, self.overlap, self.seed, self.speed = module, buffers, overlap, seed, speed
        self.params = [p for p in module.parameters() if p.requires_grad]
        self._check_tensors(module, world)
        self.param_vector = TensorVector(self.params)
        floating = [b for b in module.buffers() if b.dtype == torch.float32]
        self.buffer_vector = TensorVector(floating if buffers == "average" else [])
        if sync_start:
            self._broadcast_start()
        if isinstance(topology, str):
            topology = TopologyConfig(kind=topology, nodes=world.size, weights=weights)
        if topology.nodes != world.size:
            _fail("topology.nodes", topology.nodes, f"this process group has {world.size} processes")
        self.topology = build_topology(topology)
        self.views = self.topology.views(world.rank)  # one per iteration of a time-varying topology's period
        self.sizes = spec.step_sizes("constant", 1.0, eps, 1)  # eps, or 1 when the rule has no consensus step
        self.auto = AutoDeadline(deadline_start_s, overlap, world.size) if auto else None
        self.deadline_window = deadline_window
        first = self.auto.deadline_s if self.auto else deadline_s
        self.timer = DeadlineTimer(first, 1, world.device) if spec.deadline_bound else None
        device = self.params[0].device
        parts: list = [GridCodec(self.param_vector.numel, self.bits, seed, block_size)]
        if self.buffer_vector:
            parts.append((self.buffer_vector.numel, 32))
        self.exchange = ModelExchange(world, self.views, parts, seed, device) if self.gossip else None
        self.x_sent = torch.zeros(self.param_vector.numel, dtype=torch.float32, device=device)
        self.b_sent = torch.zeros(self.buffer_vector.numel, dtype=torch.float32, device=device)
        self.iteration = 0
        self._collective_bytes = 0
        self._pending: PendingExchange | None = None
        self._mixed: list[Tensor] | None = None
        self._stream: BatchStream | None = None  # the batches rounds() draws from (a pass continues across calls)
        self._started = time.monotonic()
        self.node_tb: ScalarLogger = ScalarLogger()
        self.global_tb: ScalarLogger = ScalarLogger()
        if tensorboard is not None:
            self.node_tb = TensorBoardLogger(Path(tensorboard) / f"node_{world.rank:03d}")
            if world.rank == 0:
                self.global_tb = TensorBoardLogger(Path(tensorboard) / "global")

    # -- checks at construction ----------------------------------------------------------------------------

    @staticmethod
    def _check(spec, bits, eps, deadline_s, buffers, speed) -> int:
        allowed = spec.allowed_bits
        if bits is None:
            bits = 4 if 4 in allowed else 16
        elif allowed and bits not in allowed:
            unquantized = set(allowed) <= {16, 32}
            _fail("bits", bits, f"algorithm={spec.name} exchanges unquantized models: use 16 or 32" if unquantized
                  else "use 1..8 (quantized), 16 (half) or 32 (raw)")
        if not (isinstance(eps, (int, float)) and 0 < eps <= 1):
            _fail("eps", eps, "the consensus step must be in (0, 1]")
        if spec.deadline_bound and deadline_s != "auto" and not _seconds(deadline_s):
            _fail("deadline_s", deadline_s, 'the deadline T_d must be a finite number of seconds > 0, or "auto"')
        if buffers not in BUFFER_MODES:
            _fail("buffers", buffers, "choose average (mix them like the model) or local (each node keeps its own)")
        if isinstance(speed, (int, float)) and not speed > 0:
            _fail("speed", speed, "an emulated speed is a number of samples per second > 0")
        return bits

    @staticmethod
    def _check_auto(overlap: bool, start_s: float, window: int) -> None:
        if not overlap:
            _fail("overlap", overlap, 'deadline_s="auto" here follows the exchange time, which needs overlap=True; '
                  "without overlap the rule weighs gradient noise against the step your optimizer takes, which the "
                  "wrapper does not know (qtd launch and qtd sim runs have it): use overlap=True or a fixed deadline_s")
        if not _seconds(start_s):
            _fail("deadline_start_s", start_s, "the first window's T_d must be a finite number of seconds > 0")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            _fail("deadline_window", window, "the rounds between two agreements on T_d: an integer >= 1")

    @staticmethod
    def _check_block_size(block_size: int, bits: int, gossip: bool) -> None:
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 0 or block_size % 8:
            _fail("block_size", block_size, "use 0 (one grid per message) or a positive multiple of 8, e.g. 256")
        if block_size and not (gossip and 1 <= bits <= 8):
            _fail("block_size", block_size, "block-wise grids cut quantized model messages (bits 1..8 of a gossip "
                  "algorithm): use block_size=0")

    def _check_tensors(self, module: nn.Module, world: World) -> None:
        if not self.params:
            raise ConfigError(f"{type(module).__name__} has no trainable parameters to train")
        for name, p in module.named_parameters():
            if p.requires_grad and p.dtype != torch.float32:
                raise ConfigError(f"parameter {name!r} is {p.dtype}: qtd exchanges float32 parameters; keep the "
                                  "model in float32 and use torch.autocast for mixed precision")
        devices = {p.device for p in self.params}
        if devices != {world.device}:
            raise ConfigError(f"the model's parameters are on {sorted(map(str, devices))} but this node computes "
                              f"on {world.device}: call module.to({str(world.device)!r}) before wrapping it")

    def _broadcast_start(self) -> None:
        """Collective: every node starts from rank 0's parameters and buffers."""
        for vector in (self.param_vector, self.buffer_vector):
            if vector:
                flat = vector.gather()
                broadcast(flat, self.world, 0, "agreeing on the initial model")
                vector.copy_(flat)

    # -- rounds -----------------------------------------------------------------------------------------------

    def rounds(self, batches: Iterable[Any], count: int | None = None) -> Iterator[Round]:
        """Collective: ``count`` rounds (default ``len(batches)``, the fewest any node has), drawing micro-batches
        from ``batches`` (a DataLoader or any iterable; a new pass starts whenever one is used up, and a pass
        continues across calls with the same ``batches``). Every node must run the same number of rounds."""
        if self._stream is None or self._stream.source is not batches:
            self._stream = BatchStream(batches)
        stream = self._stream
        count = self._agree_on_count(batches, count)
        for _ in range(count):
            rnd = self._begin(stream)
            try:
                yield rnd
            except GeneratorExit:  # the loop was left (break) after its optimizer step: end the round cleanly
                if rnd.gradients_done:
                    rnd.finish()
                raise
            rnd.finish()

    def _agree_on_count(self, batches: Iterable[Any], count: int | None) -> int:
        explicit = count is not None
        if count is None:
            if not hasattr(batches, "__len__"):
                raise ConfigError(f"rounds(): {type(batches).__name__} has no len(); pass count= (rounds per call)")
            count = len(batches)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            _fail("count", count, "the number of rounds is an integer >= 0")
        table = gather_table({"count": count}, self.world, "agreeing on the number of rounds")["count"]
        if explicit and table.min() != table.max():
            raise ConfigError(f"rounds(count=...) differs between nodes ({', '.join(str(int(c)) for c in table)}): "
                              "every node must run the same number of rounds")
        return int(table.min())

    def _speed_at(self, iteration: int) -> float | None:
        if isinstance(self.speed, SpeedModel):
            return self.speed.speed(self.world.rank, iteration)
        return float(self.speed) if self.speed else None

    def _begin(self, stream: BatchStream) -> Round:
        if self._pending is not None or self._mixed is not None:
            raise RuntimeError(f"round {self.iteration - 1} was left unfinished (its micro-batches were not "
                               "iterated): leave a rounds() loop only after the round's optimizer step")
        iteration, self._round_start = self.iteration, time.monotonic()
        self._wait_before = self.exchange.wait_s if self.exchange else 0.0
        if self.gossip:
            self.param_vector.gather(self.x_sent)
            sent = [self.x_sent] + ([self.buffer_vector.gather(self.b_sent)] if self.buffer_vector else [])
            self._pending = self.exchange.post(sent, iteration)
            if not self.overlap:
                self._mixed, self._pending = self.exchange.mixed(self._pending), None
        speed = self._speed_at(iteration)
        phase = DeadlinePhase(self.timer, speed) if self.timer else FixedBatchPhase(speed, self.world.device)
        return Round(iteration, phase, stream, self.params, speed, self._gradients_ready, self._finish_round)

    @torch.no_grad()
    def _gradients_ready(self, rnd: Round) -> None:
        """A collective's round: the mean gradient of all nodes, before the user's optimizer step."""
        if self.gossip:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        all_reduce_sum(flat, self.world, f"gradient all-reduce at round {rnd.iteration}")
        flat.div_(self.world.size)
        for p, piece in zip(self.params, self.param_vector.pieces(flat)):
            p.grad = piece.clone() if p.grad is None else p.grad.copy_(piece)
        self._collective_bytes += ring_allreduce_bytes(flat.numel() * flat.element_size(), self.world.size)

    @torch.no_grad()
    def _finish_round(self, rnd: Round) -> None:
        if not rnd.gradients_done:
            raise RuntimeError(f"round {rnd.iteration} ended before its micro-batches were iterated: iterate every "
                               "round to its end (for batch in rnd: ...) before its optimizer step")
        if self.gossip:
            mixed = self._mixed if self._mixed is not None else self.exchange.mixed(self._pending)
            self._pending = self._mixed = None
            w_self = self.exchange.view(rnd.iteration).self_weight
            self.param_vector.add_(self.spec.consensus(mixed[0], w_self, self.x_sent, self.sizes))
            if self.buffer_vector:
                self.buffer_vector.add_(consensus_delta(mixed[1], w_self, self.b_sent, 1.0))
        elif self.buffer_vector:  # all-reduce SGD: the buffers' mean, as DDP keeps them in step
            flat = self.buffer_vector.gather()
            all_reduce_sum(flat, self.world, f"buffer all-reduce at round {rnd.iteration}")
            self.buffer_vector.copy_(flat.div_(self.world.size))
            self._collective_bytes += ring_allreduce_bytes(flat.numel() * 4, self.world.size)
        self.iteration += 1
        wait_s = (self.exchange.wait_s if self.exchange else 0.0) - self._wait_before
        round_s = time.monotonic() - self._round_start
        scalars = {"node/deadline_s": self.timer.deadline_s} if self.auto else {}
        stats = stats_from(rnd.result, rnd.speed, wait_s, round_s, scalars=scalars)
        self.node_tb.scalars(node_scalars(stats, self.bytes_sent, self.train_s), self.iteration)
        if self.auto:
            self._tune_deadline(rnd.result, wait_s, round_s)

    def _tune_deadline(self, result: Any, wait_s: float, round_s: float) -> None:
        """deadline_s="auto": record the round; every ``deadline_window`` rounds, collectively, the next T_d.
        The exchange shows when the round waited for it after the compute phase; it then took the whole round
        so far (the user's optimizer step between the two hid it too)."""
        auto = self.auto
        seen = seen_exchange_s(result.compute_s, wait_s, True) is not None
        auto.record(result.compute_s, round_s if seen else None, result.samples, None)
        if self.iteration % self.deadline_window == 0:
            table = gather_table(auto.values(), self.world, f"agreeing on the deadline after round {self.iteration}")
            self.timer.deadline_s = auto.agree(table)

    @property
    def deadline_s(self) -> float | None:
        """The T_d of the next round (None for the fixed-batch algorithms); the same on every node."""
        return self.timer.deadline_s if self.timer else None

    # -- what a user reads, saves and logs -------------------------------------------------------------------

    @property
    def bytes_sent(self) -> int:
        """Algorithm traffic this node sent so far, headers included (what the engine counts)."""
        return self.exchange.bytes_sent if self.exchange else self._collective_bytes

    @property
    def train_s(self) -> float:
        return time.monotonic() - self._started

    def average_state_dict(self) -> dict[str, Tensor]:
        """Collective: the ``state_dict`` of the network-average model (buffers included), on every rank."""
        return network_average_state(self.module, self.world)

    def save_model(self, path: str | Path) -> dict[str, Tensor]:
        """Collective: write the network-average model's ``state_dict`` to ``path`` (``model.pt``) on rank 0,
        loadable with ``module.load_state_dict(torch.load(path, weights_only=True))``; returns it on every rank."""
        state = self.average_state_dict()
        if self.world.rank == 0:
            write_model_file(state, path)
        return state

    def log_evaluation(self, loss: float, accuracy: float) -> EvalPoint:
        """Collective: record an evaluation of the network-average model (rank 0's ``loss`` and ``accuracy``)
        with the engine's global TensorBoard tags: eval/loss, eval/accuracy, eval/consensus_error (computed
        here), comm/bytes_sent_total and time/train_s. Returns the point on every rank."""
        x = self.param_vector.gather().clone()
        average = all_reduce_sum(x.clone(), self.world, "evaluation").div_(self.world.size)
        deviation = float(((x - average) ** 2).sum())
        values = {"deviation": deviation, "bytes_sent": self.bytes_sent, "time_s": self.train_s,
                  "loss": float(loss), "accuracy": float(accuracy)}
        table = gather_table(values, self.world, "evaluation")
        point = EvalPoint(iteration=self.iteration, time_s=float(table["time_s"].mean()),
                          eval_loss=float(table["loss"][0]), eval_accuracy=float(table["accuracy"][0]),
                          consensus_error=float(table["deviation"].mean()),
                          bytes_sent=int(table["bytes_sent"].sum()), eval_bytes=0)
        self.global_tb.scalars(eval_scalars(point), point.iteration)
        return point

    def state_dict(self) -> dict[str, Any]:
        """The round counter and byte counts (the model and your optimizer checkpoint themselves)."""
        state: dict[str, Any] = {"iteration": self.iteration, "collective_bytes": self._collective_bytes}
        if self.exchange:
            state.update(self.exchange.state_dict())
        if self.auto:
            state.update(self.auto.state_dict())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration, self._collective_bytes = int(state["iteration"]), int(state["collective_bytes"])
        if self.exchange:
            self.exchange.load_state_dict(state)
        if self.auto:
            if "auto_deadline_s" not in state:
                raise ConfigError('this state_dict was saved without deadline_s="auto": resume with the deadline_s '
                                  "it was saved with")
            self.auto.load_state_dict(state)
            self.timer.deadline_s = self.auto.deadline_s

    def close(self) -> None:
        """Close the TensorBoard writers; leave the process group if this wrapper joined it."""
        self.node_tb.close()
        self.global_tb.close()
        if self._owns_group:
            close_world(self.world)
            self._owns_group = False

    def __enter__(self) -> "Decentralized":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
