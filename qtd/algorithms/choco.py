"""CHOCO-SGD's compressed-difference gossip (Koloskova, Stich and Jaggi, ICML 2019), pure.

Every node i keeps a public copy x̂_i of its model that all its neighbours also keep, and sends only the
compressed difference q_i = Q(x_i - x̂_i). Sender and receivers add the same decoded q_i, so the copies stay
identical everywhere; as the models converge the differences shrink, and so does the compression error
(unlike QuanTimed's, which scales with the model's range), so 1 or 2 bits per element suffice.

A node needs only two extra model-sized tensors, whatever its degree: its own copy x̂_i and the weighted sum
of its neighbours' copies s_i = sum_{j in N_i} w_ij x̂_j, which moves by sum_j w_ij q_j: the same mixed sum of
decoded messages the other gossip algorithms compute (:func:`.decentralized.mix_neighbours`). The consensus
direction is sum_j w_ij (x̂_j - x̂_i) = s_i - (1 - w_ii) x̂_i, and the update

    x_i <- x_i - alpha g_i + gamma sum_{j in N_i} w_ij (x̂_j - x̂_i)

is the spec's rule with ``mixed`` set to that direction. The real step, the simulator (one row per node of
every tensor here) and the tests' reference use these functions. Only tensor methods: no torch import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor


def choco_update(x: "Tensor", direction: "Tensor", grad: "Tensor", alpha: float, gamma: float) -> "Tensor":
    """x <- x - alpha g + gamma sum_j w_ij (x̂_j - x̂_i), ``direction`` being that sum (:meth:`PublicCopies.direction`)."""
    return x - alpha * grad + gamma * direction


class PublicCopies:
    """Node i's public copy x̂_i and its neighbours' weighted sum s_i, both starting at zero (as CHOCO's).

    For one node, ``like`` is its flat model and ``w_self`` its self weight w_ii; for the simulator, ``like``
    is the (n, p) stack of models and ``w_self`` the (n,) self weights, and every call works row by row.
    """

    def __init__(self, like: "Tensor", w_self: "Tensor | float") -> None:
        self.own = like.new_zeros(like.shape)  # x̂_i
        self.neighbours = like.new_zeros(like.shape)  # s_i = sum_{j in N_i} w_ij x̂_j
        if hasattr(w_self, "dim") and w_self.dim() == 1 and like.dim() == 2:
            w_self = w_self.to(like.dtype).unsqueeze(1)
        self.others_weight = 1 - w_self  # sum_{j in N_i} w_ij

    def difference(self, x: "Tensor") -> "Tensor":
        """What node i compresses and sends: x_i - x̂_i."""
        return x - self.own

    def receive(self, own_q: "Tensor", mixed_q: "Tensor") -> None:
        """Add this iteration's decoded messages: x̂_i += q_i (this node's own, as its neighbours decode it) and
        s_i += sum_{j in N_i} w_ij q_j."""
        self.own.add_(own_q)
        self.neighbours.add_(mixed_q)

    def direction(self) -> "Tensor":
        """sum_{j in N_i} w_ij (x̂_j - x̂_i) = s_i - (1 - w_ii) x̂_i: the consensus term of the update."""
        return self.neighbours - self.others_weight * self.own

    def state_dict(self) -> dict[str, Any]:
        return {"public_copy": self.own.detach().cpu().clone(),
                "public_neighbours": self.neighbours.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """KeyError when the checkpoint holds no public copies (it was written by another algorithm)."""
        for key, target in (("public_copy", self.own), ("public_neighbours", self.neighbours)):
            saved = state[key]
            if tuple(saved.shape) != tuple(target.shape):
                raise ValueError(f"{key} has shape {tuple(saved.shape)}, expected {tuple(target.shape)}")
            target.copy_(saved.to(target.device))
