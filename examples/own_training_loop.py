"""An ordinary torchrun training script (its own model, a shuffling DataLoader, SGD with momentum and weight
decay, a cosine schedule, checkpoints) turned into QuanTimed-DSGD by the lines marked `# qtd` (the README's
"Use it in your own training loop" shows them as a diff against the same script with DDP):

    torchrun --standalone --nproc_per_node 4 examples/own_training_loop.py [--epochs 30] [--out runs/own_loop]

Each process is one node of a ring. Every round it sends its model quantized to 4 bits to its two
neighbours, computes gradients on its own shard of scikit-learn's bundled handwritten digits until the 20 ms
deadline, steps its own optimizer and mixes in the neighbours' models. At the end it writes the
network-average model to OUT/model.pt (BatchNorm statistics included) and prints its test accuracy; a run
that finds OUT/checkpoint_rank*.pt resumes from them.
"""

import argparse
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import qtd  # qtd


class Net(nn.Module):
    """64 pixels -> 128 hidden units with BatchNorm -> 10 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(64, 128)
        self.norm = nn.BatchNorm1d(128)
        self.out = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.norm(self.hidden(x))))


def digits(train: bool) -> TensorDataset:
    """The 1,797 bundled 8x8 digits, a fixed 80/20 split, pixels scaled to [0, 1]."""
    x, y = load_digits(return_X_y=True)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = torch.tensor(x, dtype=torch.float32)[order] / 16.0, torch.tensor(y)[order]
    cut = int(0.8 * len(y))
    return TensorDataset(x[:cut], y[:cut]) if train else TensorDataset(x[cut:], y[cut:])


@torch.no_grad()
def accuracy(model: nn.Module, data: TensorDataset) -> float:
    model.eval()
    x, y = data.tensors
    return float((model(x).argmax(dim=1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", default="runs/own_loop")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()

    train = digits(train=True)
    shard = torch.utils.data.Subset(train, range(rank, len(train), world_size))  # this node's own samples
    loader = DataLoader(shard, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(rank))
    torch.manual_seed(0)
    model = Net()
    dec = qtd.Decentralized(model, "quantimed", bits=4, eps=0.5, deadline_s=0.02)  # qtd
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)

    checkpoint = out / f"checkpoint_rank{rank}.pt"
    start_epoch = 0
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        dec.load_state_dict(state["qtd"])  # qtd
        start_epoch = state["epoch"]

    for epoch in range(start_epoch, args.epochs):
        model.train()
        for rnd in dec.rounds(loader):  # qtd: one round per batch of the loader
            optimizer.zero_grad()
            for x, y in rnd:  # qtd: micro-batches until the deadline
                loss = F.cross_entropy(model(x), y)
                loss.backward()
            optimizer.step()
        scheduler.step()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "epoch": epoch + 1,
                    "qtd": dec.state_dict()}, checkpoint)  # qtd

    state = dec.save_model(out / "model.pt")  # qtd: the network-average model, written by rank 0
    final = Net()
    final.load_state_dict(state)
    test_accuracy = accuracy(final, digits(train=False))
    if rank == 0:
        print(f"test accuracy {test_accuracy:.4f} after {args.epochs} epochs; model in {out / 'model.pt'}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
