"""Parameter-server mode as a torch.optim.Optimizer in an ordinary torchrun script: every worker trains on its
own shard of scikit-learn's bundled digits, and `qtd.TopKAMSGrad` sends only the largest 5% of each gradient
(plus what error feedback kept from earlier steps), all-gathers them and takes the same AMSGrad step on every
worker, so the workers' models stay identical:

    torchrun --standalone --nproc_per_node 4 examples/ps_optimizer.py [--steps 300] [--compressor topk]

It prints the test accuracy, the bytes each worker uploaded per step against a dense float32 gradient, and
writes OUT/model.pt and OUT/optimizer_rankK.pt (the optimizer's state_dict: server state and residual).
"""

import argparse
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import qtd


def digits(train: bool) -> TensorDataset:
    """The 1,797 bundled 8x8 digits, a fixed 80/20 split, pixels scaled to [0, 1]."""
    x, y = load_digits(return_X_y=True)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = torch.tensor(x, dtype=torch.float32)[order] / 16.0, torch.tensor(y)[order]
    cut = int(0.8 * len(y))
    return TensorDataset(x[:cut], y[:cut]) if train else TensorDataset(x[cut:], y[cut:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--compressor", default="topk", choices=["topk", "blocksign", "none"])
    parser.add_argument("--out", default="runs/ps_optimizer")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()

    train = digits(train=True)
    shard = torch.utils.data.Subset(train, range(rank, len(train), world_size))
    loader = DataLoader(shard, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(rank))
    torch.manual_seed(0)  # every worker starts from the same model: the server state is replicated
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = qtd.TopKAMSGrad(model.parameters(), lr=3e-3, k_ratio=0.05, error_feedback=True,
                                compressor=args.compressor)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.steps // 2, gamma=0.3)

    step = 0
    while step < args.steps:
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()  # collective: every worker steps together
            scheduler.step()
            step += 1
            if step == args.steps:
                break

    optimizer.check_replicas()  # the workers' models and server states are bit-identical
    torch.save(optimizer.state_dict(), out / f"optimizer_rank{rank}.pt")
    x, y = digits(train=False).tensors
    with torch.no_grad():
        accuracy = float((model(x).argmax(dim=1) == y).float().mean())
    if rank == 0:
        torch.save(model.state_dict(), out / "model.pt")
        dense = sum(p.numel() for p in model.parameters()) * 4
        print(f"test accuracy {accuracy:.4f} after {args.steps} steps; {args.compressor} uploaded "
              f"{optimizer.upload_bytes // args.steps:,} bytes per step and worker (dense float32: {dense:,})")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
