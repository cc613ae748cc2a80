"""The model exchange of synchronous gossip, in one place: encode -> post -> wait -> decode -> mix.

The real engine's gossip step (:class:`.gossip.GossipStep`) and the library's wrapper
(:class:`qtd.api.Decentralized`) both exchange through :class:`ModelExchange`, so both put the same bytes on
the wire (:func:`qtd.compress.encode_message`: the same header, noise keys and payload), count the same
bytes and check every received message the same way. A part may instead name another codec of
:mod:`qtd.compress.message_codec` (CHOCO's TopK or sign differences).
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from ...algorithms import mix_neighbours
from ...comm import LinkModel, NeighbourExchange, PendingExchange, World
from ...compress.message_codec import GridCodec, SparseCodec
from ...topology import NodeView


class ModelExchange:
    """One message Q(x_i) to and from every neighbour per iteration, and the mixed term sum_j w_ij z_j.

    Not a collective: this node and its neighbours each call :meth:`post` and then :meth:`mixed` once per
    iteration; all receives and sends are posted at :meth:`post`, so whatever the caller computes between the
    two calls overlaps the communication. ``parts`` are the (element count, bits) of the tensors sent per
    iteration (or their codecs), each as its own wire message, all in one transfer per neighbour: the engine
    sends the model alone; the library wrapper may add the model's float buffers (BatchNorm statistics) at
    32 bits.
    """

    def __init__(self, world: World, views: NodeView | Sequence[NodeView],
                 parts: Sequence[tuple[int, int] | GridCodec | SparseCodec], seed: int, device: torch.device,
                 link: LinkModel | None = None) -> None:
        self.seed, self.link = seed, link
        self.codecs = [GridCodec(part[0], part[1], seed) if isinstance(part, tuple) else part for part in parts]
        sizes = [codec.message_nbytes for codec in self.codecs]
        self._slices = [(sum(sizes[:k]), size) for k, size in enumerate(sizes)]
        self._carried = 0  # bytes sent before the latest regroup
        self._connect(world, views)
        self._decoded = [torch.empty(codec.numel, dtype=torch.float32, device=device) for codec in self.codecs]
        self._mixed = [torch.empty(codec.numel, dtype=torch.float32, device=device) for codec in self.codecs]
        self._own: list[Tensor] | None = None  # this node's own decoded messages, for difference gossip

    def _connect(self, world: World, views: NodeView | Sequence[NodeView]) -> None:
        self.world = world
        # one view per iteration of a period (a time-varying topology: iteration t uses views[t % period])
        self.views = (views,) if isinstance(views, NodeView) else tuple(views)
        nbytes = sum(codec.message_nbytes for codec in self.codecs)
        by_peers: dict[tuple[int, ...], NeighbourExchange] = {}  # rounds with the same peers share buffers
        for view in self.views:
            if view.neighbours not in by_peers:
                by_peers[view.neighbours] = NeighbourExchange(world, view.neighbours, nbytes, self.link)
        self._rounds = [by_peers[view.neighbours] for view in self.views]
        self._exchanges = list(by_peers.values())

    def regroup(self, world: World, view: NodeView) -> None:
        """An elastic run lost a node: exchange with ``view``'s neighbours in ``world`` from now on (the byte
        count goes on)."""
        self._carried = self.bytes_sent
        self._connect(world, view)

    def view(self, iteration: int) -> NodeView:
        """This node's neighbours and weights at ``iteration``."""
        return self.views[iteration % len(self.views)]

    def _exchange(self, iteration: int) -> NeighbourExchange:
        return self._rounds[iteration % len(self._rounds)]

    def post(self, tensors: Sequence[Tensor], iteration: int) -> PendingExchange:
        """Encode ``tensors`` (one per part, flat) as this node's messages of ``iteration`` and post the exchange."""
        exchange = self._exchange(iteration)
        send = exchange.send_message
        for tensor, codec, (start, size) in zip(tensors, self.codecs, self._slices):
            codec.encode(tensor.detach(), self.world.node, iteration, out=send[start:start + size])
        return exchange.start(iteration)

    def _received(self, messages: dict[int, Tensor], part: int, iteration: int) -> Iterator[tuple[Tensor, float]]:
        codec, (start, size) = self.codecs[part], self._slices[part]
        decoded = self._decoded[part]
        view = self.view(iteration)
        for j, weight in zip(view.neighbours, view.neighbour_weights):
            yield codec.decode(messages[j][start:start + size], j, iteration, out=decoded), weight

    def mixed(self, pending: PendingExchange) -> list[Tensor]:
        """Wait for the exchange (bounded by comm.timeout_s); per part, sum_{j in N_i} w_ij z_j (reused buffers)."""
        messages = self._exchange(pending.iteration).wait(pending)
        for part, out in enumerate(self._mixed):
            mix_neighbours(self._received(messages, part, pending.iteration), out=out)
        return self._mixed

    def sent(self, iteration: int, part: int = 0) -> Tensor:
        """This node's own message of ``iteration`` (posted by :meth:`post`), decoded as its neighbours decode it
        (a reused buffer of its own: the mixed sums of :meth:`mixed` stay valid)."""
        codec, (start, size) = self.codecs[part], self._slices[part]
        if self._own is None:
            self._own = [torch.empty_like(buffer) for buffer in self._decoded]
        return codec.decode(self._exchange(iteration).send_message[start:start + size], self.world.node, iteration,
                            out=self._own[part])

    @property
    def bytes_sent(self) -> int:
        """Bytes this node sent so far, headers included."""
        return self._carried + sum(exchange.sent.total for exchange in self._exchanges)

    @property
    def wait_s(self) -> float:
        """Seconds spent blocked in :meth:`mixed` so far (emulated link delay included)."""
        return sum(exchange.wait_s for exchange in self._exchanges)

    @property
    def _peers(self) -> list[int]:
        """Every node this one exchanges with in some round, ascending."""
        return sorted({j for view in self.views for j in view.neighbours})

    def state_dict(self) -> dict[str, Any]:
        per_edge = [sum(exchange.sent.per_edge.get(j, 0) for exchange in self._exchanges) for j in self._peers]
        return {"bytes_per_edge": torch.tensor(per_edge, dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for exchange in self._exchanges:
            for j in exchange.sent.per_edge:
                exchange.sent.per_edge[j] = 0
        for j, count in zip(self._peers, state["bytes_per_edge"].tolist()):
            first = next(exchange for exchange in self._exchanges if j in exchange.sent.per_edge)
            first.sent.per_edge[j] = int(count)
