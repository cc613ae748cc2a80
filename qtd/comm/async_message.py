"""What an asynchronous message carries after the encoded model: a 40-byte trailer, and what the channel
hands the training loop for each neighbour (:class:`Arrival`)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import torch

TRAILER_FORMAT = "<qqqdd"  # version, newest version at posting, flags, produced_at, available_at
TRAILER_BYTES = struct.calcsize(TRAILER_FORMAT)
FLAG_FINAL = 1


def pack_trailer(version: int, newest: int, flags: int, produced_at: float, available_at: float) -> bytes:
    return struct.pack(TRAILER_FORMAT, version, newest, flags, produced_at, available_at)


def read_trailer(trailer: torch.Tensor) -> tuple[int, int, int, float, float]:
    """(version, newest version at posting, flags, produced_at, available_at) of a CPU uint8 trailer."""
    return struct.unpack(TRAILER_FORMAT, trailer.numpy().tobytes())


@dataclass(frozen=True)
class Arrival:
    """The newest usable model from one neighbour, as returned by :meth:`AsyncNeighbourChannel.poll`.

    ``message`` (CPU uint8, the encoded model without the trailer) stays valid until the next poll.
    """

    peer: int
    message: torch.Tensor
    version: int  # the sender's iteration count when it produced this model
    newest_known: int  # the newest version of this peer this node has heard of (>= version)
    produced_at: float  # wall-clock time (time.time()) the sender handed the model to its channel
    available_at: float  # when it became usable here (emulated links), else its arrival time
    final: bool  # the peer's last model: it has stopped
    skipped: int  # usable models from this peer superseded before being used
