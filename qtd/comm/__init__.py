"""The only package that calls torch.distributed: process group, neighbour exchange, collectives."""

from .async_channel import AsyncNeighbourChannel
from .async_message import Arrival
from .membership import JoinRequests
from .exchange import ByteCounter, NeighbourExchange, PendingExchange
from .group import (World, all_gather_bytes, all_reduce_sum, barrier, broadcast, choose_backend,
                    close_world, group_started, init_world, join_world, admit_world, record_blame, regroup_world, wait_works)
from ..costs import LinkModel, ring_allgather_bytes, ring_allreduce_bytes

__all__ = [
    "Arrival", "AsyncNeighbourChannel", "ByteCounter", "JoinRequests", "LinkModel", "NeighbourExchange", "PendingExchange", "World",
    "all_gather_bytes", "all_reduce_sum", "barrier", "broadcast", "choose_backend", "close_world", "group_started",
    "admit_world", "init_world", "join_world", "record_blame", "regroup_world", "ring_allgather_bytes", "ring_allreduce_bytes", "wait_works",
]
