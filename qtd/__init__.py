"""qtd: straggler-robust, communication-efficient decentralized training in PyTorch."""

__version__ = "0.1.0"
