"""The record of who was in an elastic run (``comm.on_peer_loss: continue``): the members and the spectral
gap of their graph at every evaluation, every change with its iteration and cause, and the traffic of the
nodes that were lost (it stays in the run's totals)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence


class MembershipLog:
    """Kept alike on every node: each change is agreed by all survivors (:mod:`qtd.comm.membership`)."""

    def __init__(self, members: Sequence[int], spectral_gap: float) -> None:
        self.initial = list(members)
        self.members = list(members)
        self.spectral_gap = float(spectral_gap)
        self.events: list[dict[str, Any]] = []
        self._unreported: list[dict[str, Any]] = []
        self._last: dict[int, tuple[float, float]] = {}  # node -> (bytes_sent, eval_bytes) at the latest evaluation
        self.lost_bytes = 0
        self.lost_eval_bytes = 0
        self.welcome_bytes = 0  # this node's share of the exact model exchanges that let nodes in

    def seen(self, table: Mapping[str, Any], order: Sequence[int]) -> None:
        """An evaluation's gathered table (one row per member, ``order`` their nodes): each member's traffic."""
        self._last = {node: (float(table["bytes_sent"][k]), float(table["eval_bytes"][k]))
                      for k, node in enumerate(order)}

    def change(self, event: dict[str, Any]) -> None:
        """The survivors agreed on ``event`` (its ``members``, ``lost``, ``iteration``, ``cause``, ...)."""
        for node in event["lost"]:
            sent, evaluated = self._last.get(node, (0.0, 0.0))
            self.lost_bytes += int(sent)
            self.lost_eval_bytes += int(evaluated)
        self.members = sorted(event["members"])
        self.spectral_gap = float(event["spectral_gap"])
        self.events.append(event)
        self._unreported.append(event)

    def columns(self) -> dict[str, Any]:
        """metrics.jsonl's membership columns of an evaluation; the first row after a change carries it."""
        columns: dict[str, Any] = {"nodes": len(self.members), "spectral_gap": self.spectral_gap}
        if self._unreported:
            columns["membership_change"] = self._unreported
            self._unreported = []
        return columns

    def scalars(self) -> dict[str, float]:
        return {"membership/nodes": float(len(self.members)), "membership/spectral_gap": self.spectral_gap}

    def summary(self, join_bytes: int) -> dict[str, Any]:
        """summary.json's keys; ``join_bytes``: every node's traffic of the exchanges that let nodes in."""
        return {"membership": {"initial": self.initial, "final": self.members, "changes": self.events,
                               "join_bytes": int(join_bytes)},
                "nodes_final": len(self.members)}
