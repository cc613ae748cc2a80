"""One small frozen dataclass per component.

Each dataclass validates itself in ``__post_init__`` and raises :class:`ConfigError` with a message that
names the field (as its dotted key), the value it got and what is allowed. Cross-section checks live in
:meth:`Config.__post_init__`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..algorithms.local_sgd import LocalSGD
from ..algorithms.registry import NAMES as ALGORITHMS, Runner, get_spec
from ..algorithms.schedules import LR_DECAYS
from ..errors import ConfigError
from ..formats import ALLOWED_BITS, DIFFERENCE_KINDS, QUANTIZED_BITS
from .rules import (BACKENDS, BUILTIN_DATASETS, BUILTIN_MODELS, MAX_BATCH, MAX_DURATION_S, MAX_NODES,  # noqa: F401
                    MAX_SEED, MIN_SPEED, MODES, ON_PEER_LOSS, PARTITIONS, PS_COMPRESSORS, SCHEDULES, SPEED_DISTRIBUTIONS,
                    TIME_VARYING_TOPOLOGIES, TOPOLOGIES, WEIGHTS, _batch, _choice, _duration, _fail, _is_import_path,
                    _non_negative, _positive, _seed, _speed)



@dataclass(frozen=True)
class RunConfig:
    """Where a run writes, how long it lasts, how often it evaluates and checkpoints."""

    out_dir: str = "runs/quickstart"
    iterations: int = 200
    seed: int = 0
    eval_every: int = 20
    checkpoint_every: int = 0  # 0: no periodic checkpoints (a final one is still written)
    resume: str = "auto"  # auto: continue from the newest complete checkpoint; never: start over
    progress: bool = True
    time_budget_s: float = 0.0  # 0: no wall-clock budget; otherwise stop a node after this many seconds
    # async_dsgd: seconds of training between evaluations of the network-average model (nodes pause at the
    # same training time); 0: a tenth of time_budget_s, or 1 s without a time budget
    eval_every_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.out_dir:
            _fail("run.out_dir", self.out_dir, "give a directory path")
        _positive("run.iterations", self.iterations)
        _seed("run.seed", self.seed)
        _positive("run.eval_every", self.eval_every)
        _non_negative("run.checkpoint_every", self.checkpoint_every)
        _choice("run.resume", self.resume, ("auto", "never"))
        _duration("run.time_budget_s", self.time_budget_s, allow_zero=True)
        _duration("run.eval_every_s", self.eval_every_s, allow_zero=True)


@dataclass(frozen=True)
class TopologyConfig:
    """The graph of nodes and how its mixing matrix W is built."""

    kind: str = "ring"
    nodes: int = 8
    p: float = 0.4  # edge probability for erdos_renyi
    seed: int = 0  # graph sampling seed (erdos_renyi)
    weights: str = "laplacian"  # laplacian: W = I - L/kappa; metropolis: Metropolis-Hastings
    kappa: float | None = None  # None: max degree + 2 (the paper's choice)
    path: str = ""  # edge-list file for kind=file
    period: int = 8  # random_matching: matchings drawn (with topology.seed) before the schedule repeats

    def __post_init__(self) -> None:
        _choice("topology.kind", self.kind, TOPOLOGIES)
        if not 1 <= self.period <= 4096:
            _fail("topology.period", self.period, "must be in 1..4096 (random_matching: rounds per period)")
        if not 1 <= self.nodes <= MAX_NODES:
            _fail("topology.nodes", self.nodes, f"must be in 1..{MAX_NODES} (one process per node)")
        if not 0 < self.p <= 1:
            _fail("topology.p", self.p, "must be in (0, 1]")
        _seed("topology.seed", self.seed)
        _choice("topology.weights", self.weights, WEIGHTS)
        if self.kappa is not None:
            _positive("topology.kappa", self.kappa)
        if self.kind == "file" and not self.path:
            _fail("topology.path", self.path, "topology.kind=file needs the path of an edge-list file")


@dataclass(frozen=True)
class AlgorithmConfig:
    """The decentralized update rule and its step sizes."""

    name: str = "quantimed"
    batch_size: int = 20  # B: the fixed batch of qdsgd, dsgd, async_dsgd and allreduce_sgd
    micro_batch_size: int = 5  # quantimed: gradients are computed in micro-batches until the deadline
    deadline_s: float | str = 0.5  # T_d (deadline-bound algorithms), or auto: tuned online (qtd.deadline.auto)
    deadline_start_s: float = 0.1  # deadline_s=auto: the T_d of the first window, before anything is measured
    alpha: float = 0.3  # schedule=paper: a0 in alpha = a0 / T^(1/6); schedule=constant: alpha itself
    eps: float = 15.0  # schedule=paper: e0 in eps = e0 / T^(1/2); constant: eps itself (quantized methods)
    gamma: float = 0.3  # choco, quantimed_choco: the consensus step on the public copies, in (0, 1], constant
    schedule: str = "paper"
    overlap: bool = True  # exchange models while gradients are computed
    max_in_flight: int = 2  # async_dsgd: sends in flight per neighbour before a newer model replaces one
    # The local optimizer (qtd.algorithms.local_sgd): the defaults are the paper's plain SGD step
    momentum: float = 0.0  # heavy-ball momentum of the gradient step, as torch.optim.SGD's
    nesterov: bool = False
    weight_decay: float = 0.0  # L2: the direction is g + weight_decay * x
    warmup_steps: int = 0  # linear learning-rate warm-up over this many iterations
    lr_decay: str = "none"  # then none, cosine (to 0 at run.iterations) or step (decay_gamma every decay_every)
    decay_every: int = 0
    decay_gamma: float = 0.1

    def __post_init__(self) -> None:
        get_spec(self.name)  # the registry names the allowed algorithms
        _batch("algorithm.batch_size", self.batch_size)
        _batch("algorithm.micro_batch_size", self.micro_batch_size)
        if isinstance(self.deadline_s, str):
            if self.deadline_s != "auto":
                _fail("algorithm.deadline_s", self.deadline_s, "must be a number of seconds > 0, or auto")
        else:
            _duration("algorithm.deadline_s", self.deadline_s)
        _duration("algorithm.deadline_start_s", self.deadline_start_s)
        _positive("algorithm.alpha", self.alpha)
        _positive("algorithm.eps", self.eps)
        if not 0 < self.gamma <= 1:
            _fail("algorithm.gamma", self.gamma, "CHOCO's consensus step must be in (0, 1]")
        _choice("algorithm.schedule", self.schedule, SCHEDULES)
        if self.max_in_flight < 1:
            _fail("algorithm.max_in_flight", self.max_in_flight, "must be >= 1")
        self._check_local_optimizer()

    def _check_local_optimizer(self) -> None:
        if not 0 <= self.momentum < 1:
            _fail("algorithm.momentum", self.momentum, "must be in [0, 1) (0: plain SGD, the paper's step)")
        if self.nesterov and not self.momentum:
            _fail("algorithm.nesterov", self.nesterov, "Nesterov momentum needs algorithm.momentum > 0")
        _non_negative("algorithm.weight_decay", self.weight_decay)
        _non_negative("algorithm.warmup_steps", self.warmup_steps)
        _choice("algorithm.lr_decay", self.lr_decay, LR_DECAYS)
        _non_negative("algorithm.decay_every", self.decay_every)
        if self.lr_decay == "step" and not self.decay_every:
            _fail("algorithm.decay_every", self.decay_every, "algorithm.lr_decay=step needs algorithm.decay_every >= 1")
        if not 0 < self.decay_gamma <= 1:
            _fail("algorithm.decay_gamma", self.decay_gamma, "must be in (0, 1]")

    @property
    def auto_deadline(self) -> bool:
        """deadline_s=auto: T_d is tuned online from what the nodes measure."""
        return self.deadline_s == "auto"

    @property
    def first_deadline_s(self) -> float:
        """The T_d of the first iteration: the fixed deadline, or deadline_start_s with deadline_s=auto."""
        return self.deadline_start_s if self.auto_deadline else float(self.deadline_s)

    def local_sgd(self, horizon: int) -> LocalSGD:
        """The local optimizer these keys describe, for a run of ``horizon`` iterations."""
        return LocalSGD(self.momentum, self.nesterov, self.weight_decay, self.warmup_steps, self.lr_decay,
                        self.decay_every, self.decay_gamma, horizon)


@dataclass(frozen=True)
class CompressionConfig:
    """How models are encoded on the wire in decentralized mode."""

    bits: int = 4  # 1..8: stochastic quantization; 16: half precision; 32: raw float32
    differences: str = "grid"  # choco, quantimed_choco: grid (compression.bits), topk or sign (with its norm)
    k_ratio: float = 0.01  # differences=topk: share of the elements sent
    block_size: int = 0  # 0: one grid per message; B: one grid (offset, scale) per B elements (a multiple of 8)

    def __post_init__(self) -> None:
        if self.bits not in ALLOWED_BITS:
            _fail("compression.bits", self.bits, "use 1..8 (quantized), 16 (half) or 32 (raw)")
        if not 0 <= self.block_size <= 2**30 or self.block_size % 8:
            _fail("compression.block_size", self.block_size,
                  "use 0 (one grid per message) or a positive multiple of 8 up to 2**30, e.g. 256")
        _choice("compression.differences", self.differences, DIFFERENCE_KINDS)
        if not 0 < self.k_ratio <= 1:
            _fail("compression.k_ratio", self.k_ratio, "must be in (0, 1]: the share of the elements TopK sends")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, where it lives and how it is split across nodes."""

    name: str = "digits"  # a built-in name or an import path package.module:factory
    root: str = ""  # where torchvision datasets or IDX files live
    download: bool = False
    partition: str = "contiguous"  # contiguous blocks (the paper), iid (shuffled), dirichlet (non-IID)
    samples_per_node: int = 0  # 0: split the training set evenly over the nodes
    dirichlet_alpha: float = 0.5
    test_fraction: float = 0.2  # held-out share for datasets that have no test split of their own
    eval_on: str = "test"  # test: held-out data; train: all training data (the paper's training loss)
    eval_samples: int = 0  # 0: all of the evaluation set
    classes: tuple[int, ...] = ()  # keep only these classes, relabelled 0, 1, ... in this order (): all
    grayscale: bool = False  # RGB images -> one channel of luma (the paper's CIFAR-10 experiment)

    def __post_init__(self) -> None:
        if self.name not in BUILTIN_DATASETS and not _is_import_path(self.name):
            _fail("data.name", self.name,
                  "choose one of " + ", ".join(BUILTIN_DATASETS) + " or give package.module:factory")
        _choice("data.partition", self.partition, PARTITIONS)
        _non_negative("data.samples_per_node", self.samples_per_node)
        _positive("data.dirichlet_alpha", self.dirichlet_alpha)
        if not 0 < self.test_fraction < 1:
            _fail("data.test_fraction", self.test_fraction, "must be in (0, 1)")
        _choice("data.eval_on", self.eval_on, ("test", "train"))
        _non_negative("data.eval_samples", self.eval_samples)
        if self.classes and (len(self.classes) < 2 or len(set(self.classes)) != len(self.classes)
                             or min(self.classes) < 0):
            _fail("data.classes", list(self.classes), "give two or more different class ids >= 0 (or [] for all)")
        if self.name in ("mnist_idx",) and not self.root:
            _fail("data.root", self.root, "data.name=mnist_idx needs the directory of the IDX files")


@dataclass(frozen=True)
class ModelConfig:
    """Which network every node trains."""

    name: str = "mlp"  # a built-in name or an import path package.module:factory
    hidden: tuple[int, ...] = (50,)  # hidden widths of the mlp (the paper's 784-50-10)

    def __post_init__(self) -> None:
        if self.name not in BUILTIN_MODELS and not _is_import_path(self.name):
            _fail("model.name", self.name,
                  "choose one of " + ", ".join(BUILTIN_MODELS) + " or give package.module:factory")
        for width in self.hidden:
            if width < 1:
                _fail("model.hidden", list(self.hidden), "every hidden width must be >= 1")


@dataclass(frozen=True)
class EmulationConfig:
    """Emulated stragglers and links (README: "Emulating stragglers and slow links"); off by default.

    The simulator always uses the speed distribution and comm_time_s: its time model needs them.
    """

    stragglers: bool = False
    speed_distribution: str = "uniform"  # uniform: V ~ U(speed_low, speed_high); fixed: `speeds`
    speed_low: float = 10.0  # samples per second
    speed_high: float = 90.0
    speeds: tuple[float, ...] = ()  # per-node speeds for speed_distribution=fixed
    links: bool = False
    comm_time_s: float = 0.0  # T_c: seconds to send one 16-bit copy of the model over one link
    link_latency_s: float = 0.0

    def __post_init__(self) -> None:
        _choice("emulation.speed_distribution", self.speed_distribution, SPEED_DISTRIBUTIONS)
        _speed("emulation.speed_low", self.speed_low)
        _speed("emulation.speed_high", self.speed_high)
        if not self.speed_high >= self.speed_low:
            _fail("emulation.speed_high", self.speed_high,
                  f"must be >= emulation.speed_low ({self.speed_low})")
        for speed in self.speeds:
            _speed("emulation.speeds", speed)
        if self.speed_distribution == "fixed" and not self.speeds:
            _fail("emulation.speeds", list(self.speeds),
                  "speed_distribution=fixed needs one speed per node")
        _duration("emulation.comm_time_s", self.comm_time_s, allow_zero=True)
        _duration("emulation.link_latency_s", self.link_latency_s, allow_zero=True)


@dataclass(frozen=True)
class CommConfig:
    """The process group and its waits."""

    backend: str = "auto"  # auto: nccl when CUDA is available, else gloo
    timeout_s: float = 60.0  # bound on every wait for a peer
    on_peer_loss: str = "stop"  # stop: every node stops; continue: the survivors drop the lost node and go on

    def __post_init__(self) -> None:
        _choice("comm.backend", self.backend, BACKENDS)
        _duration("comm.timeout_s", self.timeout_s)
        _choice("comm.on_peer_loss", self.on_peer_loss, ON_PEER_LOSS)


@dataclass(frozen=True)
class PSConfig:
    """Parameter-server mode: compressed gradients, all-gathered, AMSGrad on replicated server state."""

    compressor: str = "topk"  # none (dense AMSGrad, all-reduce), topk, blocksign
    k_ratio: float = 0.01  # topk: share of the parameters sent
    error_feedback: bool = True  # topk and blocksign
    value_bits: int = 32  # topk: values sent as float32 (32) or float16 (16)
    batch_size: int = 32  # samples per worker and step
    lr: float = 0.001
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    warmup_steps: int = 0
    decay_every: int = 0  # 0: no step decay
    decay_gamma: float = 0.1
    check_every: int = 50  # replica checksum every this many steps (0: never)

    def __post_init__(self) -> None:
        _choice("ps.compressor", self.compressor, PS_COMPRESSORS)
        if not 0 < self.k_ratio <= 1:
            _fail("ps.k_ratio", self.k_ratio, "must be in (0, 1]")
        if self.value_bits not in (16, 32):
            _fail("ps.value_bits", self.value_bits, "use 32 (float32 values) or 16 (float16 values)")
        _batch("ps.batch_size", self.batch_size)
        _positive("ps.lr", self.lr)
        for key, value in (("ps.beta1", self.beta1), ("ps.beta2", self.beta2)):
            if not 0 <= value < 1:
                _fail(key, value, "must be in [0, 1)")
        _positive("ps.eps", self.eps)
        _non_negative("ps.warmup_steps", self.warmup_steps)
        _non_negative("ps.decay_every", self.decay_every)
        if not 0 < self.decay_gamma <= 1:
            _fail("ps.decay_gamma", self.decay_gamma, "must be in (0, 1]")
        _non_negative("ps.check_every", self.check_every)


@dataclass(frozen=True)
class Config:
    """The whole run: one section per component."""

    mode: str = "decentralized"
    run: RunConfig = field(default_factory=RunConfig)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    emulation: EmulationConfig = field(default_factory=EmulationConfig)
    comm: CommConfig = field(default_factory=CommConfig)
    ps: PSConfig = field(default_factory=PSConfig)

    def __post_init__(self) -> None:
        _choice("mode", self.mode, MODES)
        bits = self.compression.bits
        spec = get_spec(self.algorithm.name)
        if self.mode == "decentralized" and spec.allowed_bits and bits not in spec.allowed_bits:
            _fail("compression.bits", bits,
                  f"algorithm.name={spec.name} exchanges unquantized models: use 16 or 32, "
                  "or algorithm.name=qdsgd for quantized messages")
        if self.mode == "ps" and self.algorithm.local_sgd(1) != AlgorithmConfig().local_sgd(1):
            _fail("algorithm.momentum", self.algorithm.momentum, "the local optimizer keys (algorithm.momentum, "
                  "nesterov, weight_decay, warmup_steps, lr_decay) apply to mode=decentralized; mode=ps steps "
                  "with AMSGrad: use ps.lr, ps.warmup_steps, ps.decay_every")
        if self.mode == "ps" and self.emulation.links:
            _fail("emulation.links", True, "link emulation is not available in mode=ps (emulation.stragglers is)")
        if (self.mode == "decentralized" and spec.uses_eps
                and self.algorithm.schedule == "constant" and self.algorithm.eps > 1):
            _fail("algorithm.eps", self.algorithm.eps,
                  "with algorithm.schedule=constant the consensus step must be in (0, 1] "
                  "(with schedule=paper it is e0 in eps = e0 / sqrt(T))")
        if self.compression.differences != "grid" and spec.runner is not Runner.DIFFERENCE_GOSSIP:
            _fail("compression.differences", self.compression.differences,
                  f"TopK and sign compress CHOCO's differences (algorithm.name=choco or quantimed_choco), not "
                  f"{spec.name}'s messages; leave compression.differences=grid")
        if self.compression.block_size and (self.mode != "decentralized" or not spec.allowed_bits
                                            or bits not in QUANTIZED_BITS or self.compression.differences != "grid"):
            _fail("compression.block_size", self.compression.block_size,
                  "block-wise grids cut quantized model messages (compression.bits 1..8, "
                  "compression.differences=grid, an algorithm that sends its model); this run's messages have "
                  "no grid: use block_size=0")
        if (self.mode == "decentralized" and self.topology.kind in TIME_VARYING_TOPOLOGIES
                and spec.runner in (Runner.ASYNC, Runner.DIFFERENCE_GOSSIP)):
            _fail("topology.kind", self.topology.kind,
                  f"a new mixing matrix every iteration runs with the synchronous gossip algorithms (quantimed, "
                  f"qdsgd, dsgd), not {spec.name}; use a static graph (e.g. topology.kind=exponential)")
        if self.mode == "decentralized" and spec.runner is Runner.ASYNC and self.emulation.stragglers:
            emu, timeout = self.emulation, self.comm.timeout_s
            slowest = min(emu.speeds) if emu.speed_distribution == "fixed" and emu.speeds else emu.speed_low
            per_iteration = self.algorithm.batch_size / slowest
            if per_iteration > timeout / 2:  # a neighbour silent for comm.timeout_s counts as dead
                _fail("comm.timeout_s", timeout,
                      f"too short for {spec.name}: the slowest emulated node needs algorithm.batch_size / speed = "
                      f"{per_iteration:g} s per iteration, and a neighbour silent for comm.timeout_s counts as "
                      "dead; raise comm.timeout_s above twice that")
        if self.comm.on_peer_loss == "continue":
            _check_elastic(self, spec)
        if self.emulation.speed_distribution == "fixed" and len(self.emulation.speeds) != self.topology.nodes:
            _fail("emulation.speeds", list(self.emulation.speeds),
                  f"give one speed per node ({self.topology.nodes} = topology.nodes)")


ELASTIC_RUNNERS = (Runner.GOSSIP, Runner.DIFFERENCE_GOSSIP, Runner.COLLECTIVE)


def _check_elastic(config: Config, spec) -> None:
    """comm.on_peer_loss=continue: the runs whose survivors can go on without the lost node's state."""
    if config.mode == "ps":
        _fail("comm.on_peer_loss", "continue",
              "mode=ps does not go on with fewer workers yet (only mode=decentralized does): use "
              "on_peer_loss=stop, with run.checkpoint_every and qtd launch --max-restarts to resume")
    if spec.runner not in ELASTIC_RUNNERS:
        _fail("comm.on_peer_loss", "continue",
              f"{spec.name} runs asynchronously, whose channels cannot be rebuilt mid-run yet; continue works "
              "with the synchronous gossip algorithms (quantimed, qdsgd, dsgd, choco, quantimed_choco) and "
              "allreduce_sgd: use one of those or on_peer_loss=stop")
    if config.topology.kind in TIME_VARYING_TOPOLOGIES:
        _fail("comm.on_peer_loss", "continue",
              f"topology.kind={config.topology.kind} changes the peers every iteration, and its schedule is "
              "not rebuilt for survivors: use a static graph (e.g. topology.kind=exponential) or on_peer_loss=stop")
    if config.comm.backend == "nccl":
        _fail("comm.on_peer_loss", "continue",
              "a fresh process group among the survivors is built with gloo only (NCCL cannot abort a "
              "communicator blocked on a dead peer from here): use comm.backend=gloo")

