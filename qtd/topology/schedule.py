"""Time-varying topologies: a periodic schedule of rounds, each a symmetric doubly stochastic W_k in which
every node talks to at most one peer.

``one_peer_exponential``: in round k = t mod tau (tau = ceil(log2 n)) node i is paired with i XOR 2^k,
which is i + 2^k or i - 2^k as bit k of i is 0 or 1 (the peers of the exponential graph of SGP and
BlueFog, one per iteration); w_ii = w_ij = 1/2 for a pair, and a node whose partner would be >= n keeps
its model that round (w_ii = 1). Every node exchanges one message per iteration instead of one per
neighbour. For n a power of 2 the product of one period's W_k is exactly the average J/n (the hypercube's
averaging); for other n the union of the rounds is connected and the product contracts towards it.

``random_matching``: every round a seeded uniformly random perfect matching (one node idles when n is
odd), ``topology.period`` rounds long, then repeated.
"""

from __future__ import annotations

import math
import random

import networkx as nx
import numpy as np

from .graphs import _empty

TIME_VARYING = ("one_peer_exponential", "random_matching")
DEFAULT_MATCHING_PERIOD = 8


def one_peer_exponential_rounds(n: int) -> list[list[tuple[int, int]]]:
    """The pairs (i, j), i < j, of every round of one period."""
    rounds = max(1, math.ceil(math.log2(n))) if n > 1 else 1
    return [[(i, i ^ (1 << k)) for i in range(n) if i < (i ^ (1 << k)) < n] for k in range(rounds)]


def random_matching_rounds(n: int, period: int, seed: int) -> list[list[tuple[int, int]]]:
    """``period`` seeded perfect matchings of 0..n-1 (the same for every node: same seed, same draws)."""
    rng = random.Random(seed)
    rounds = []
    for _ in range(period):
        order = list(range(n))
        rng.shuffle(order)
        rounds.append([tuple(sorted(order[k:k + 2])) for k in range(0, n - 1, 2)])
    return rounds


def round_mixing(n: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    """W of one round: 1/2 on each pair and its two diagonal entries, 1 on the diagonal of idle nodes."""
    w = np.eye(n)
    for i, j in pairs:
        w[i, i] = w[j, j] = w[i, j] = w[j, i] = 0.5
    return w


def round_graph(n: int, pairs: list[tuple[int, int]], kind: str) -> nx.Graph:
    graph = _empty(n, kind)
    graph.add_edges_from(pairs)
    return graph


def union_graph(n: int, rounds: list[list[tuple[int, int]]], kind: str) -> nx.Graph:
    """Every pair that talks in some round: what the nodes' neighbourhoods are over a period."""
    graph = _empty(n, kind)
    for pairs in rounds:
        graph.add_edges_from(pairs)
    return graph


def period_product(rounds: list[np.ndarray]) -> np.ndarray:
    """W_{tau-1} ... W_1 W_0: what one period does to the stacked models."""
    product = np.eye(len(rounds[0]))
    for w in rounds:
        product = w @ product
    return product


def contraction(product: np.ndarray) -> float:
    """||P - J/n||_2: the factor by which one period shrinks the distance to the average at worst (for a
    symmetric W this is max(|lambda_2|, |lambda_n|), the static graphs' beta)."""
    n = len(product)
    if n < 2:
        return 0.0
    return float(np.linalg.norm(product - np.full((n, n), 1.0 / n), ord=2))
