"""The order of an asynchronous simulation: one event per node step, processed in virtual time.

Node j's k-th step (0-based) ends ``pace(j, k)`` virtual seconds after its previous one; ties go to the
lower node id. At its event node j takes its step with the newest model it holds from each neighbour,
then its new model is what its neighbours hold from that instant on (the T_c of sending it is in its pace).
"""

from __future__ import annotations

import heapq
from typing import Callable

Pace = Callable[[int, int], tuple[float, float]]  # (node, step) -> (seconds, the node's speed V_{j,k})


class EventQueue:
    def __init__(self, nodes: int, pace: Pace) -> None:
        self.pace = pace
        self.steps = [0] * nodes
        self._speed = [0.0] * nodes
        self._heap: list[tuple[float, int]] = []
        for j in range(nodes):
            seconds, self._speed[j] = pace(j, 0)
            heapq.heappush(self._heap, (seconds, j))

    def pop(self) -> tuple[float, int, int, float]:
        """The next event: (virtual end time, node, its step number k, its speed during that step)."""
        when, j = heapq.heappop(self._heap)
        return when, j, self.steps[j], self._speed[j]

    def push_next(self, node: int, ended: float) -> None:
        """Node ``node`` finished the step popped last for it at ``ended``: schedule its next one."""
        self.steps[node] += 1
        seconds, self._speed[node] = self.pace(node, self.steps[node])
        heapq.heappush(self._heap, (ended + seconds, node))
