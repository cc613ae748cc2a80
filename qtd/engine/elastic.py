"""The node driver's part in elastic runs (``comm.on_peer_loss: continue``): go on without a lost node, let a
node (back) in, and keep the record of both (:class:`.membership.MembershipLog`).

The agreement itself is :mod:`qtd.comm.membership`'s. Here the driver follows it: a new world, the mixing
weights of the new graph (:func:`qtd.topology.survivors`), the step's exchange rebuilt for it
(``Step.regroup``), the evaluator's shard of the evaluation set, the run files when the lowest node changed,
and a joining node's model (the weighted average of its new neighbours' models, sent exactly once).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

from ..comm import World, admit_world, regroup_world
from ..comm.membership import Regroup
from ..errors import PeerError
from ..topology import survivors
from .evaluate import Evaluator
from .steps.model_exchange import ModelExchange


class ElasticNode:
    """Mixed into :class:`qtd.engine.driver.NodeDriver`; uses its world, parts, step, evaluator, clock, files."""

    world: World

    def _regroup(self, iteration: int, error: PeerError, started: float) -> int:
        """A peer was lost at ``iteration`` (``error``): with ``comm.on_peer_loss: continue`` the survivors agree
        on who is left and where to go on, and go on in a fresh process group, each with the model it has; the
        time this took counts as training time. Otherwise ``error`` ends the run, as before. Returns the
        iteration every survivor goes on from (the furthest one reached, so none undoes an update)."""
        if not self.world.elastic:
            raise error
        while True:
            world, change = regroup_world(self.world, iteration, error)
            try:
                self._changed(world, change, started, iteration)
                return change.iteration
            except PeerError as again:  # another node lost meanwhile
                iteration, error = change.iteration, again

    def _admit(self, iteration: int, time_s: float) -> None:
        """Collective, right after an evaluation that saw nodes ask to join: let them in from ``iteration``."""
        started = time.monotonic()
        joiners, self._joiners = self._joiners, ()
        world, change = admit_world(self.world, joiners, iteration, time_s, self.membership.events)
        self._changed(world, change, started, iteration)
        self._welcome(world, joiners, change.iteration)

    def _welcomed(self, change: Regroup) -> None:
        """This node joined a running elastic run: take its place in the new graph and its neighbours' models."""
        self.membership.events.extend(change.history)
        self._changed(self.world, change, time.monotonic() - change.seconds, change.iteration)
        self._welcome(self.world, change.joined, change.iteration)

    def _changed(self, world: World, change: Regroup, started: float, iteration: int) -> None:
        """Go on in ``world``: the new graph's weights, the step's exchange, the evaluator, the record."""
        graph = survivors(self.config.topology, world.members)  # TopologyError: the survivors fell apart
        self.world = self.parts.world = world
        self.step.regroup(world, graph.view(world.node), change.iteration)
        self.evaluator = Evaluator(world, self.parts.problem.eval_set, self.parts.problem.eval_indices,
                                   self.evaluator.average, replicated=False)
        lost_s = time.monotonic() - started
        if not change.joined or world.node not in change.joined:
            self.clock.add(lost_s)
        event = {**change.record(), "time_s": self.clock.now(), "seconds_lost": round(lost_s, 3),
                 "spectral_gap": graph.spectral_gap, "edges": graph.edges}
        self.membership.change(event)
        if world.rank == 0:
            self.files.lead(self.config)
            if change.joined:
                what = f"node(s) {', '.join(map(str, change.joined))} joined after iteration {change.iteration}"
            elif not change.lost:
                what = f"a wait failed at iteration {iteration}, but every node answered; all go on in a new group"
            else:
                what = (f"node(s) {', '.join(map(str, change.lost))} {change.cause} at iteration {iteration}; "
                        f"{world.size} nodes go on from iteration {change.iteration}")
            print(f"qtd: {what} ({world.size} nodes, spectral gap {graph.spectral_gap:.3g}, {lost_s:.1f} s; "
                  "comm.on_peer_loss=continue)", file=sys.stderr, flush=True)
        # after a loss every node evaluates at once (the first point of the new membership); a join comes
        # right after an evaluation, and the joining node goes straight to the next iteration like the others
        self._regrouped = not change.joined

    def _welcome(self, world: World, joiners: tuple[int, ...], iteration: int) -> None:
        """Collective: every node sends its model once, exactly (float32), to its neighbours; a node that just
        joined takes their weighted average, x_i <- sum_j w_ij x_j / sum_j w_ij. The others keep theirs."""
        view = survivors(self.config.topology, world.members).view(world.node)
        models = ModelExchange(world, view, [(self.flat.numel, 32)], 0, self.flat.params.device, None)
        mixed, = models.mixed(models.post([self.flat.params.detach()], iteration))
        self.membership.welcome_bytes += models.bytes_sent
        if world.node in joiners and view.neighbours:
            with torch.no_grad():
                self.flat.params.copy_(mixed / (1.0 - view.self_weight))

    # the driver's own attributes, for readers of this mixin
    config: Any
    parts: Any
    step: Any
    evaluator: Evaluator
    clock: Any
    files: Any
    flat: Any
    membership: Any
    _joiners: tuple[int, ...]
    _regrouped: bool
