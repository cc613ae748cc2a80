"""Functions run inside the gloo processes of tests/test_api.py: the library API against the config engine."""

from __future__ import annotations

import copy
import itertools
import json

import torch
import torch.nn.functional as F


def _library_run(config, world, out_dir):
    """``config``'s run written as a user's own loop with qtd.Decentralized and torch.optim.SGD."""
    import qtd
    from qtd.algorithms import get_spec, scheduled_lr
    from qtd.deadline import SpeedModel
    from qtd.engine.problem import build_problem

    algo, run = config.algorithm, config.run
    problem = build_problem(config)
    model = copy.deepcopy(problem.template)
    sampler = problem.node_sampler(world.rank, run.seed)  # the engine's stream of local samples
    spec = get_spec(algo.name)
    sizes = spec.step_sizes(algo.schedule, algo.alpha, algo.eps, run.iterations)
    speed = SpeedModel.from_config(config.emulation, run.seed) if config.emulation.stragglers else None
    dec = qtd.Decentralized(model, algo.name, bits=config.compression.bits, eps=sizes.eps,
                            deadline_s=algo.deadline_s, topology=config.topology, seed=run.seed, world=world,
                            speed=speed, tensorboard=f"{out_dir}/tensorboard")
    optimizer = torch.optim.SGD(model.parameters(), lr=sizes.alpha * sizes.eps, momentum=algo.momentum,
                                nesterov=algo.nesterov, weight_decay=algo.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: scheduled_lr(
        1.0, t, algo.warmup_steps, algo.lr_decay, algo.decay_every, algo.decay_gamma, run.iterations))
    size = algo.micro_batch_size if spec.deadline_bound else algo.batch_size
    batches = (sampler.sample(size) for _ in itertools.count())
    samples = []
    for rnd in dec.rounds(batches, count=run.iterations):
        optimizer.zero_grad()
        for x, y in rnd:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            rnd.add_loss(loss)
        optimizer.step()
        schedule.step()
        samples.append(rnd.samples)
    point = dec.log_evaluation(loss=1.25, accuracy=0.5)  # the engine's eval/* tags, consensus error computed
    saved = dec.save_model(f"{out_dir}/model.pt")
    params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    result = {"params": params, "samples": samples, "bytes_sent": dec.bytes_sent, "average": saved,
              "state": dec.state_dict(), "consensus_error": point.consensus_error, "bytes_total": point.bytes_sent}
    dec.close()
    return result


def library_vs_engine_worker(rank: int, world_size: int, args: dict, out_path: str) -> None:
    """For every case: the engine's run (run_node) and the same run through the library, in one gloo group."""
    from qtd.comm import close_world, init_world
    from qtd.config import load_config
    from qtd.engine import run_node

    world = init_world("gloo", timeout_s=60)
    results = {}
    for name, overrides in args["cases"].items():
        out = f"{args['out']}/{name}"
        config = load_config(args["config"], [*overrides, f"run.out_dir={out}/engine"])
        run_node(config, world)
        if name not in args.get("engine_only", ()):
            results[name] = _library_run(config, world, f"{out}/library")
    torch.save(results, out_path)
    close_world(world)


def make_batchnorm_model(input_shape, num_classes):
    """A model factory (model.name=tests.api_workers:make_batchnorm_model) with BatchNorm buffers."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(input_shape[0], 12), torch.nn.BatchNorm1d(12),
                               torch.nn.ReLU(), torch.nn.Linear(12, num_classes))


class IndexedDigits(torch.utils.data.Dataset):
    """(input, label, index) of a small tensor dataset, so a test sees which samples each micro-batch held."""

    def __init__(self, n: int) -> None:
        generator = torch.Generator().manual_seed(3)
        self.x = torch.randn(n, 6, generator=generator)
        self.y = torch.randint(0, 3, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


def deadline_loader_worker(rank: int, world_size: int, args: dict, out_path: str) -> None:
    """quantimed over a shuffling DataLoader at fixed emulated speeds, with torch.autocast, Adam and gradient
    clipping; records every micro-batch's sample indices."""
    import qtd
    from qtd.deadline import SpeedModel

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    speeds = SpeedModel("fixed", 1, 1, args["speeds"])
    dec = qtd.Decentralized(model, "quantimed", bits=6, eps=0.5, deadline_s=args["deadline_s"], speed=speeds,
                            topology="complete")
    loader = torch.utils.data.DataLoader(IndexedDigits(args["samples"]), batch_size=args["batch_size"],
                                         shuffle=True, generator=torch.Generator().manual_seed(rank))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    rounds, batches = [], []
    for epoch in range(args["epochs"]):
        for rnd in dec.rounds(loader, count=args["rounds"]):
            optimizer.zero_grad()
            sizes = []
            for x, y, index in rnd:
                with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision in the forward pass
                    loss = F.cross_entropy(model(x), y)
                loss.backward()
                sizes.append(len(index))
                batches.append(index.tolist())
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            rounds.append({"samples": rnd.samples, "sizes": sizes, "compute_s": rnd.result.compute_s})
    with open(out_path, "w") as handle:
        json.dump({"rounds": rounds, "batches": batches, "bytes_sent": dec.bytes_sent}, handle)
    dec.close()


def buffers_worker(rank: int, world_size: int, args: dict, out_path: str) -> None:
    """dsgd (32-bit) on a model with BatchNorm, each node's data shifted by its rank, once with the buffers
    mixed and once kept local: the running statistics before each round (as sent), after its forward
    passes and after its consensus step."""
    import qtd
    from qtd.comm import close_world, init_world

    world = init_world("gloo", timeout_s=60)
    results = {}
    for buffers in ("average", "local"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
        dec = qtd.Decentralized(model, "dsgd", bits=32, topology="ring", buffers=buffers, world=world)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        generator = torch.Generator().manual_seed(10 + rank)
        batches = [(torch.randn(8, 3, generator=generator) + 3 * rank, torch.randint(0, 2, (8,), generator=generator))
                   for _ in range(3)]
        norm, records = model[1], []
        for rnd in dec.rounds(batches):
            sent = norm.running_mean.clone()
            optimizer.zero_grad()
            for x, y in rnd:
                F.cross_entropy(model(x), y).backward()
            optimizer.step()
            after = norm.running_mean.clone()
            rnd.finish()
            records.append({"sent": sent, "after": after, "mixed": norm.running_mean.clone(),
                            "count": int(norm.num_batches_tracked)})
        results[buffers] = {"records": records, "average": dec.average_state_dict(), "state": model.state_dict(),
                            "w": torch.tensor(dec.topology.mixing, dtype=torch.float32)}
        dec.close()
    torch.save(results, out_path)
    close_world(world)


def amsgrad_worker(rank: int, world_size: int, args: dict, out_path: str) -> None:
    """The PS engine's step and qtd.TopKAMSGrad fed the engine's gradients, side by side; then the optimizer's
    state_dict saved, loaded into a new optimizer on a copy of the model, and both stepped on."""
    import io

    import qtd
    from qtd.algorithms import AMSGRAD_PS
    from qtd.comm import close_world, init_world
    from qtd.config import load_config
    from qtd.engine.parts import build_parts
    from qtd.engine.steps import build_step

    world = init_world("gloo", timeout_s=60)
    results = {}
    for name, overrides in args["cases"].items():
        config = load_config(args["config"], overrides)
        parts = build_parts(config, world, AMSGRAD_PS)
        engine, flat, ps = build_step(parts), parts.flat, config.ps
        options = dict(lr=ps.lr, k_ratio=ps.k_ratio, error_feedback=ps.error_feedback, compressor=ps.compressor,
                       value_bits=ps.value_bits, betas=(ps.beta1, ps.beta2), eps=ps.eps, world=world)
        model = copy.deepcopy(parts.problem.template)
        optimizer = qtd.TopKAMSGrad(model.parameters(), **options)

        def feed(module):  # the engine's gradient of this step, as a user's backward leaves it in .grad
            for p, (_, offset, size) in zip(module.parameters(), flat.named_slices()):
                p.grad = flat.grads[offset:offset + size].view_as(p).clone()

        def same(module, opt) -> bool:
            theta = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
            mine, theirs = opt.server.state, engine.state
            return (torch.equal(theta, flat.params) and mine.step == theirs.step
                    and all(torch.equal(getattr(mine, k), getattr(theirs, k)) for k in ("m", "v", "v_hat")))

        steps = []
        for t in range(args["iterations"]):
            engine.step(t)
            feed(model)
            optimizer.step()
            steps.append(same(model, optimizer))
        saved = io.BytesIO()
        torch.save(optimizer.state_dict(), saved)
        saved.seek(0)
        copy_model = copy.deepcopy(model)
        resumed = qtd.TopKAMSGrad(copy_model.parameters(), **options)
        resumed.load_state_dict(torch.load(saved, weights_only=True))
        after = []
        for t in range(args["iterations"], args["iterations"] + 2):
            engine.step(t)
            feed(model)
            feed(copy_model)
            optimizer.step()
            resumed.step()
            after.append(same(model, optimizer) and same(copy_model, resumed))
        optimizer.check_replicas()
        results[name] = {"steps": steps, "after": after, "bytes": [optimizer.bytes_sent, engine.bytes_sent],
                         "upload": [optimizer.upload_bytes, engine.upload_bytes]}
    with open(out_path, "w") as handle:
        json.dump(results, handle)
    close_world(world)


def auto_deadline_worker(rank: int, world_size: int, args: dict, out_path: str) -> None:
    """quantimed with deadline_s="auto" at an emulated speed: the T_d of every round, then the wrapper's state
    loaded into a second wrapper (auto, and fixed, which refuses it)."""
    import qtd
    from qtd.config import ConfigError

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    auto = {"deadline_s": "auto", "deadline_start_s": args["start_s"], "deadline_window": args["window"]}
    dec = qtd.Decentralized(model, "quantimed", bits=6, speed=args["speed"], topology="ring", **auto)
    loader = torch.utils.data.DataLoader(IndexedDigits(64), batch_size=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    rounds = []
    for rnd in dec.rounds(loader, count=args["rounds"]):
        used = dec.deadline_s
        optimizer.zero_grad()
        for x, y, _ in rnd:
            F.cross_entropy(model(x), y).backward()
        optimizer.step()
        rounds.append({"deadline_s": used, "samples": rnd.samples})
    state = dec.state_dict()
    again = qtd.Decentralized(model, "quantimed", bits=6, topology="ring", world=dec.world, sync_start=False, **auto)
    again.load_state_dict(state)
    fixed = qtd.Decentralized(model, "quantimed", bits=6, topology="ring", world=dec.world, sync_start=False)
    fixed_state = fixed.state_dict()
    try:
        again.load_state_dict(fixed_state)
        refused = ""
    except ConfigError as error:
        refused = str(error)
    with open(out_path, "w") as handle:
        json.dump({"rounds": rounds, "next": dec.deadline_s, "restored": again.deadline_s, "refused": refused},
                  handle)
    dec.close()
