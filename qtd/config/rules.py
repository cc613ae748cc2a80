"""The allowed values and the bounded checks every config section uses (:mod:`.schema`).

Each check raises :class:`ConfigError` naming the dotted key, the value it got (bounded, :func:`shown`) and
what is allowed.
"""

from __future__ import annotations

import math

from ..errors import ConfigError
from ..echo import shown

MODES = ("decentralized", "ps")
TOPOLOGIES = ("ring", "torus", "complete", "star", "exponential", "erdos_renyi", "file", "one_peer_exponential",
              "random_matching")
TIME_VARYING_TOPOLOGIES = ("one_peer_exponential", "random_matching")  # a new W every iteration
WEIGHTS = ("laplacian", "metropolis")
SCHEDULES = ("paper", "constant")
PARTITIONS = ("contiguous", "iid", "dirichlet")
BUILTIN_DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "mnist_idx", "synthetic")
BUILTIN_MODELS = ("mlp", "mlp_deep", "cnn", "comp_ams_cnn", "resnet18", "linear")
PS_COMPRESSORS = ("none", "topk", "blocksign")
SPEED_DISTRIBUTIONS = ("uniform", "fixed")
BACKENDS = ("auto", "gloo", "nccl")
ON_PEER_LOSS = ("stop", "continue")
MAX_NODES = 1024  # one process each; W is dense and its spectral gap is an O(n^3) eigendecomposition
MAX_SEED = 2**32 - 1  # seeds are scaled and offset per node before they reach torch's 64-bit generators
# Every duration becomes a sleep, a wait or a datetime.timedelta somewhere (time.sleep and thread waits overflow
# past about 9.2e9 s, timedelta past 8.6e13 s). A million seconds (11.6 days) bounds each of them, and a whole
# emulated all-reduce (2(n-1) messages of up to 2 T_c + latency each) stays far below those limits.
MAX_DURATION_S = 1e6
MIN_SPEED = 1e-3  # samples/s: a batch of MAX_BATCH at this speed is a sleep of about 1e9 s, still a valid one
MAX_BATCH = 2**20  # samples per node and step


def _fail(key: str, value: object, allowed: str) -> None:
    raise ConfigError(f"{key}={shown(value)} is not allowed: {allowed}")


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        _fail(key, value, "choose one of " + ", ".join(allowed))


def _positive(key: str, value: float) -> None:
    if not value > 0:
        _fail(key, value, "must be > 0")
    if not math.isfinite(value):  # an infinite deadline or timeout would be a hang
        _fail(key, value, "must be a finite number")


def _non_negative(key: str, value: float) -> None:
    if not value >= 0:
        _fail(key, value, "must be >= 0")
    if not math.isfinite(value):
        _fail(key, value, "must be a finite number")


def _duration(key: str, value: float, allow_zero: bool = False) -> None:
    """A number of seconds that will be slept, waited for or turned into a timedelta."""
    (_non_negative if allow_zero else _positive)(key, value)
    if value > MAX_DURATION_S:
        _fail(key, value, f"must be at most {MAX_DURATION_S:,.0f} seconds (about 11.6 days)")


def _batch(key: str, value: int) -> None:
    _positive(key, value)
    if value > MAX_BATCH:
        _fail(key, value, f"must be at most {MAX_BATCH} samples per node and step")


def _speed(key: str, value: float) -> None:
    _positive(key, value)
    if value < MIN_SPEED:
        _fail(key, value, f"must be at least {MIN_SPEED} samples per second (a slower node would sleep for years)")


def _seed(key: str, value: int) -> None:
    if not 0 <= value <= MAX_SEED:
        _fail(key, value, f"must be in 0..{MAX_SEED}")


def _is_import_path(name: str) -> bool:
    module, sep, attr = name.partition(":")
    return bool(sep and module and attr)
