"""MNIST, Fashion-MNIST and CIFAR-10 through torchvision, from ``data.root`` (downloading when allowed).

torchvision's own errors ("Dataset not found", a failed download) become one :class:`DataError` that
names ``data.root`` and ``data.download`` and says which files torchvision looks for where.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import DataConfig
from ..echo import cut, shown
from ..errors import DataError
from .arrays import ArrayDataset, DatasetSplits, standardised

# data.name -> (torchvision class name, the files torchvision expects under data.root)
TORCHVISION_SOURCES: dict[str, tuple[str, str]] = {
    "mnist": ("MNIST", "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"),
    "cifar10": ("CIFAR10", "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}"),
}


def load_torchvision(config: DataConfig) -> DatasetSplits:
    """Both splits of a torchvision dataset as uint8 arrays, standardised with the training set's statistics."""
    from torchvision import datasets

    name = config.name
    class_name, layout = TORCHVISION_SOURCES[name]
    if not config.root:
        raise DataError(f"data.name={name} needs data.root: the directory that holds {layout} "
                        f"(or that receives them with data.download=true)")
    dataset_class = getattr(datasets, class_name)
    try:
        train = dataset_class(config.root, train=True, download=config.download)
        test = dataset_class(config.root, train=False, download=config.download)
    except DataError:
        raise
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError, ... for one cause: no data
        raise DataError(_explain(config, layout, exc)) from exc
    if name == "cifar10":  # numpy (N, 32, 32, 3) uint8 -> (N, 3, 32, 32)
        def arrays(ds):
            return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(ds.targets)
    else:  # uint8 tensor (N, 28, 28) -> (N, 1, 28, 28)
        def arrays(ds):
            return ds.data.unsqueeze(1), torch.as_tensor(ds.targets)
    num_classes = len(train.classes)
    splits = DatasetSplits(ArrayDataset(*arrays(train), num_classes), ArrayDataset(*arrays(test), num_classes))
    return standardised(splits)


def _explain(config: DataConfig, layout: str, exc: Exception) -> str:
    where = f"data.name={config.name}, data.root={shown(config.root)}"
    if config.download:
        return (f"{where}: downloading with data.download=true failed ({type(exc).__name__}: {cut(str(exc))}); "
                f"check the network, or place the files as {layout} under data.root and set data.download=false")
    message = (f"{where}: torchvision found no {config.name} data there (it expects {layout} under data.root); "
               f"point data.root at that directory, or set data.download=true to fetch it")
    root = Path(config.root)
    if config.name in ("mnist", "fashion_mnist") and root.is_dir() and any(root.glob("*idx[13]-ubyte*")):
        message += f"; {shown(config.root)} itself holds IDX files: data.name=mnist_idx reads them as they are"
    return message
