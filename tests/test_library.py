"""The library's pieces without a process group: the deadline round over a user's batches, the batch stream,
the consensus split, the local optimizer against torch.optim.SGD, the schedules, bad input, the simulator's
local optimizer and model.pt, and the README's diff of the own-training-loop example."""

import collections
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import qtd
from qtd.algorithms import (LocalOptimizer, LocalSGD, StepSizes, consensus_delta, dsgd_update, quantimed_update,
                            scheduled_lr)
from qtd.api.batches import BatchStream, batch_size, split_batch
from qtd.api.round import Round
from qtd.config import ConfigError, load_config
from qtd.deadline import DeadlinePhase, DeadlineTimer, FixedBatchPhase
from qtd.sim import simulate
from tests.harness import REPO
from tests.reference import reference_models

SMALL = ["topology.kind=ring", "topology.nodes=4", "data.name=synthetic", "model.hidden=[16]", "run.eval_every=3",
         "run.progress=false", "algorithm.batch_size=8", "algorithm.schedule=constant", "algorithm.alpha=0.2",
         "algorithm.eps=0.5", "run.iterations=6"]


def _round(batches, phase, params):
    return Round(0, phase, BatchStream(batches), params, None, lambda rnd: None, lambda rnd: None)


def test_a_round_leaves_the_mean_gradient_over_every_sample_of_its_cut_micro_batches():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    data = [(torch.randn(5, 5), torch.randint(0, 3, (5,))) for _ in range(3)]
    F.cross_entropy(model(data[0][0]), data[0][1]).backward()  # autograd's first call is slow: not timed
    model.zero_grad()
    # V = 26 samples/s, T_d = 0.5 s: floor(V T_d) = 13 samples = 5 + 5 + 3 (the third batch cut)
    rnd = _round(data, DeadlinePhase(DeadlineTimer(0.5, 1), speed=26.0), list(model.parameters()))
    sizes = []
    for x, y in rnd:
        F.cross_entropy(model(x), y).backward()  # an ordinary mean loss per micro-batch
        sizes.append(len(y))
    assert sizes == [5, 5, 3] and rnd.samples == 13 and rnd.gradients_done
    mine = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    x = torch.cat([d[0] for d in data])[:13]
    y = torch.cat([d[1] for d in data])[:13]
    F.cross_entropy(model(x), y).backward()
    for got, want in zip(mine, model.parameters()):
        assert_close(got, want.grad, rtol=1e-5, atol=1e-7)


def test_a_round_that_computes_nothing_leaves_a_zero_gradient():
    model = torch.nn.Linear(2, 2)
    rnd = _round([(torch.ones(4, 2), torch.zeros(4, dtype=torch.int64))],
                 DeadlinePhase(DeadlineTimer(0.5, 1), speed=1.0), list(model.parameters()))  # floor(0.5) = 0
    assert list(rnd) == [] and rnd.samples == 0
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    with pytest.raises(RuntimeError, match="iterate each round once"):
        list(rnd)


def test_a_round_never_starts_a_batch_it_predicts_cannot_finish_but_a_stale_estimate_recovers():
    timer = DeadlineTimer(0.05, 1)
    timer._observe(10, 1.0)  # a warm-up: 0.1 s per sample, so a batch of 10 "needs" 1 s
    model = torch.nn.Linear(2, 2)
    data = [(torch.ones(10, 2), torch.zeros(10, dtype=torch.int64))]
    first = len(list(_round(data, DeadlinePhase(timer), list(model.parameters()))))
    assert first == 0  # refused: by the estimate, the batch cannot finish before the deadline ...
    counts = []
    for _ in range(8):
        rnd = _round(data, DeadlinePhase(timer), list(model.parameters()))
        for x, y in rnd:
            F.cross_entropy(model(x), y).backward()
        counts.append(rnd.samples)
    # ... then, after one empty round, one whole batch is tried as a probe, measured, and the real speed takes
    # over at once (the same round goes on with the fresh estimate)
    assert counts[0] >= 10 and counts[-1] >= 10


def test_a_fixed_batch_round_is_one_whole_batch():
    model = torch.nn.Linear(2, 2)
    batches = [(torch.ones(6, 2), torch.zeros(6, dtype=torch.int64))] * 2
    rnd = _round(batches, FixedBatchPhase(), list(model.parameters()))
    assert [len(y) for _, y in rnd] == [6] and rnd.result.samples == 6


def test_the_batch_stream_cuts_any_batch_structure_and_keeps_the_rest_for_later():
    Pair = collections.namedtuple("Pair", "x y")
    batch = {"x": torch.arange(10).view(5, 2), "meta": Pair(torch.arange(5), ["a", "b", "c", "d", "e"]), "k": 7}
    head, rest = split_batch(batch, 2)
    assert head["x"].tolist() == [[0, 1], [2, 3]] and rest["meta"].x.tolist() == [2, 3, 4]
    assert head["meta"].y == ["a", "b"] and isinstance(rest["meta"], Pair) and head["k"] == rest["k"] == 7
    assert batch_size(batch) == 5

    class Epochs:
        def __init__(self):
            self.sampler, self.epochs = self, []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

        def __iter__(self):
            return iter([torch.arange(3), torch.arange(3, 5)])

    source = Epochs()
    stream = BatchStream(source)
    taken = [stream.take(2).tolist() for _ in range(4)]
    assert taken == [[0, 1], [2], [3, 4], [0, 1]] and source.epochs == [0, 1]  # a new pass, set_epoch first
    with pytest.raises(ConfigError, match="cannot tell how many samples a batch of type str"):
        batch_size("not a batch")
    with pytest.raises(ConfigError, match="yield nothing"):
        BatchStream([]).peek_size()


def test_optimizer_step_then_consensus_is_the_papers_update():
    torch.manual_seed(1)
    x, mixed, g = torch.randn(100), torch.randn(100) * 0.5, torch.randn(100)
    w_self, alpha, eps = 0.4, 0.3, 0.25
    after_sgd = x - alpha * eps * g  # torch.optim.SGD at lr = alpha * eps
    assert_close(after_sgd + consensus_delta(mixed, w_self, x, eps), quantimed_update(x, mixed, w_self, g, alpha, eps))
    assert_close((x - alpha * g) + consensus_delta(mixed, w_self, x, 1.0), dsgd_update(x, mixed, w_self, g, alpha))


@pytest.mark.parametrize("momentum, nesterov, weight_decay", [(0.0, False, 0.01), (0.9, False, 0.0),
                                                              (0.9, True, 5e-4)])
def test_the_local_optimizer_steps_as_torch_sgd(momentum, nesterov, weight_decay):
    torch.manual_seed(2)
    start = torch.randn(50)
    reference = torch.nn.Parameter(start.clone())
    sgd = torch.optim.SGD([reference], lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    local = LocalOptimizer(LocalSGD(momentum=momentum, nesterov=nesterov, weight_decay=weight_decay), start)
    x = start.clone()
    for _ in range(5):
        grad = torch.randn(50)
        reference.grad = grad.clone()
        sgd.step()
        x = x - 0.1 * local.direction(grad, x)
    assert_close(x, reference.detach(), rtol=1e-6, atol=1e-6)
    plain = LocalOptimizer(LocalSGD(), start)
    sizes = StepSizes(0.3, 0.5)
    assert plain.direction(grad, x) is grad and plain.sizes(sizes, 7) is sizes  # the paper's rule, untouched


def test_schedules_warm_up_then_decay_as_torch_does():
    assert [scheduled_lr(1.0, t, warmup_steps=4) for t in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert scheduled_lr(1.0, 2 + 6, 2, "step", decay_every=3, decay_gamma=0.5) == 0.25
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=2.0),
                                                        T_max=10)
    for t in range(11):
        assert scheduled_lr(2.0, t, decay="cosine", horizon=10) == pytest.approx(cosine._get_closed_form_lr()[0])
        cosine.optimizer.step()
        cosine.step()
    assert scheduled_lr(1.0, 3, 1, "cosine", horizon=5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 4)))


@pytest.mark.parametrize("overrides, message", [
    (["algorithm.momentum=1.5"], "algorithm.momentum=1.5 is not allowed"),
    (["algorithm.nesterov=true"], "algorithm.nesterov=True is not allowed: Nesterov momentum needs"),
    (["algorithm.weight_decay=-1.0"], "algorithm.weight_decay=-1.0 is not allowed"),
    (["algorithm.lr_decay=linear"], "algorithm.lr_decay='linear' is not allowed: choose one of none, cosine, step"),
    (["algorithm.lr_decay=step"], "algorithm.decay_every=0 is not allowed: algorithm.lr_decay=step needs"),
    (["algorithm.decay_gamma=0.0"], "algorithm.decay_gamma=0.0 is not allowed"),
    (["mode=ps", "algorithm.momentum=0.9"], "algorithm.momentum=0.9 is not allowed: the local optimizer keys"),
])
def test_local_optimizer_keys_are_validated_by_name(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(REPO / "configs" / "quickstart.yaml", overrides)


@pytest.mark.parametrize("call, message", [
    (lambda m: qtd.Decentralized(m, "async_dsgd"), "algorithm='async_dsgd' does not run as optimizer step"),
    (lambda m: qtd.Decentralized(m, "sgd"), "algorithm='sgd' is not allowed: choose one of quantimed"),
    (lambda m: qtd.Decentralized(m, "dsgd", bits=4), "bits=4 is not allowed: algorithm=dsgd exchanges unquantized"),
    (lambda m: qtd.Decentralized(m, eps=1.5), "eps=1.5 is not allowed: the consensus step must be in (0, 1]"),
    (lambda m: qtd.Decentralized(m, deadline_s=0), "deadline_s=0 is not allowed"),
    (lambda m: qtd.Decentralized(m, buffers="sync"), "buffers='sync' is not allowed: choose average"),
    (lambda m: qtd.Decentralized(m, deadline_s="soon"), "deadline_s='soon' is not allowed: the deadline T_d must be"),
    (lambda m: qtd.Decentralized(m, deadline_s="auto", overlap=False),
     'overlap=False is not allowed: deadline_s="auto" here follows the exchange time, which needs overlap=True'),
    (lambda m: qtd.Decentralized(m, deadline_s="auto", deadline_start_s=0), "deadline_start_s=0 is not allowed"),
    (lambda m: qtd.Decentralized(m, deadline_s="auto", deadline_window=0), "deadline_window=0 is not allowed"),
    (lambda m: qtd.TopKAMSGrad(m.parameters(), compressor="qsgd"), "compressor='qsgd' is not allowed"),
    (lambda m: qtd.TopKAMSGrad(m.parameters(), k_ratio=0), "k_ratio=0 is not allowed"),
    (lambda m: qtd.TopKAMSGrad(m.parameters(), value_bits=8), "value_bits=8 is not allowed"),
])
def test_bad_library_arguments_name_what_to_change_before_joining_any_group(call, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        call(torch.nn.Linear(2, 2))


def test_importing_qtd_config_does_not_load_torch_but_qtd_decentralized_is_there():
    import subprocess
    import sys
    code = "import sys, qtd.config; print('torch' in sys.modules); import qtd; print(qtd.Decentralized.__name__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "Decentralized"], out.stderr


@pytest.mark.parametrize("algorithm, extra", [
    ("qdsgd", ["compression.bits=6", "algorithm.momentum=0.9", "algorithm.nesterov=true", "algorithm.weight_decay=0.01",
               "algorithm.warmup_steps=2", "algorithm.lr_decay=cosine"]),
    ("allreduce_sgd", ["compression.bits=32", "algorithm.momentum=0.5", "algorithm.lr_decay=step",
                       "algorithm.decay_every=2"]),
])
def test_the_simulator_applies_the_local_optimizer_as_the_reference_does(tmp_path, algorithm, extra):
    config = load_config(REPO / "configs" / "quickstart.yaml",
                         [*SMALL, f"algorithm.name={algorithm}", f"run.out_dir={tmp_path}", *extra])
    result = simulate(config, write=True, node_logs=False, progress=False)
    for got, want in zip(result.models, reference_models(config, 6)):
        assert_close(got, want, rtol=1e-5, atol=1e-6)
    plain = simulate(load_config(tmp_path / "config.yaml", ["algorithm.momentum=0.0", "algorithm.nesterov=false",
                                                            "algorithm.weight_decay=0.0", "algorithm.lr_decay=none",
                                                            "algorithm.warmup_steps=0"]), write=False)
    assert not torch.allclose(plain.models, result.models)  # the options change the run
    from qtd.engine.problem import build_problem
    model = build_problem(config).template
    model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))  # the simulator's model.pt
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert_close(flat, result.models.double().mean(dim=0).float(), rtol=0, atol=1e-7)


def test_the_asynchronous_simulation_applies_the_local_optimizer_per_node_step(tmp_path):
    from tests.sim_reference import reference_async_models
    config = load_config(REPO / "configs" / "quickstart.yaml", [
        *SMALL, "algorithm.name=async_dsgd", "compression.bits=16", "run.iterations=5", "emulation.comm_time_s=0.5",
        "algorithm.eps=1.0", "emulation.speed_distribution=fixed", "emulation.speeds=[8.0, 16.0, 32.0, 8.0]",
        "algorithm.momentum=0.9", "algorithm.weight_decay=0.01", "algorithm.lr_decay=step", "algorithm.decay_every=2",
        f"run.out_dir={tmp_path}"])
    result = simulate(config, write=False)
    for got, want in zip(result.models, reference_async_models(config, result.events)):
        assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_the_readme_diff_is_the_example_against_its_ddp_original():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Use it in your own training loop", 1)[1].split("\n## ", 1)[0]
    diff = re.search(r"```diff\n(.*?)```", section, re.S).group(1).splitlines()
    example = (REPO / "examples" / "own_training_loop.py").read_text().splitlines()
    added = [line[1:] for line in diff if line.startswith("+")]
    assert len(added) <= 11, added
    # every hunk's context and added lines stand in the example, in order and contiguous
    hunks, current = [], []
    for line in diff:
        if line.startswith("@@"):
            current = []
            hunks.append(current)
        elif line[:1] in (" ", "+", "-"):
            current.append(line)
        elif line == "" and hunks:
            current.append(" ")
    position, original = 0, []
    for hunk in hunks:
        new = [line[1:] for line in hunk if not line.startswith("-")]
        start = position
        while example[position:position + len(new)] != new:
            position += 1
            assert position < len(example), f"hunk not in the example: {new}"
        original += example[start:position] + [line[1:] for line in hunk if not line.startswith("+")]
        position += len(new)
    original = "\n".join(original + example[position:])
    assert "import qtd" not in original and "dec." not in original and "DDP(model)" in original
    compile(original, "own_training_loop_ddp.py", "exec")  # the DDP original the diff starts from is Python
