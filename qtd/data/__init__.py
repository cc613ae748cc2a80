"""Datasets held in memory, split into disjoint per-node partitions, sampled in seeded micro-batches."""

from .arrays import ArrayDataset, DatasetSplits, evaluation_indices, holdout_split, split_single
from .datasets import load_dataset
from .idx import read_idx, write_idx
from .partition import block_sizes, partition
from .sampler import NodeSampler

__all__ = [
    "ArrayDataset", "DatasetSplits", "NodeSampler", "block_sizes", "evaluation_indices", "holdout_split",
    "load_dataset", "partition", "read_idx", "split_single", "write_idx",
]
