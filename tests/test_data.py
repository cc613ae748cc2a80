import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qtd.config import DataConfig
from qtd.data import (ArrayDataset, DatasetSplits, NodeSampler, load_dataset, partition,
                      read_idx, write_idx)
from qtd.errors import CheckpointError, ConfigError, DataError


def balanced_labels(classes: int = 10, per_class: int = 500) -> torch.Tensor:
    return torch.arange(classes).repeat(per_class)


def assert_disjoint(parts: list[torch.Tensor]) -> torch.Tensor:
    everything = torch.cat(parts)
    assert len(torch.unique(everything)) == len(everything), "a sample was given to two nodes"
    return everything


# ---------------------------------------------------------------------------------------------- partitions

@pytest.mark.parametrize("scheme", ["contiguous", "iid", "dirichlet"])
def test_partitions_are_disjoint_and_cover_the_data(scheme):
    labels = balanced_labels()
    parts = partition(labels, 7, scheme, dirichlet_alpha=0.3, seed=1)
    assert len(parts) == 7
    everything = assert_disjoint(parts)
    assert torch.equal(everything.sort().values, torch.arange(len(labels)))
    assert sorted(len(part) for part in parts) == [714] * 5 + [715] * 2  # 5000 = 7 * 714 + 2
    for part in parts:
        assert part.dtype == torch.int64 and torch.equal(part, part.sort().values)


@pytest.mark.parametrize("scheme", ["contiguous", "iid", "dirichlet"])
def test_samples_per_node_gives_equal_blocks(scheme):
    parts = partition(balanced_labels(), 20, scheme, samples_per_node=200, seed=3)
    assert [len(part) for part in parts] == [200] * 20
    assert len(assert_disjoint(parts)) == 4000


def test_contiguous_blocks_follow_dataset_order():
    parts = partition(torch.zeros(1000, dtype=torch.int64), 5, "contiguous", samples_per_node=150)
    for node, part in enumerate(parts):
        assert torch.equal(part, torch.arange(node * 150, (node + 1) * 150))


def test_iid_is_seeded_and_shuffled():
    labels = balanced_labels()
    first = partition(labels, 4, "iid", seed=5)
    assert all(torch.equal(a, b) for a, b in zip(first, partition(labels, 4, "iid", seed=5)))
    assert not all(torch.equal(a, b) for a, b in zip(first, partition(labels, 4, "iid", seed=6)))
    contiguous = partition(labels, 4, "contiguous")
    assert not torch.equal(first[0], contiguous[0])
    # every node sees roughly every class in an iid split
    for part in first:
        counts = torch.bincount(labels[part], minlength=10).float()
        assert counts.min() > 0.5 * counts.mean()


def max_class_share(labels: torch.Tensor, parts: list[torch.Tensor]) -> float:
    shares = [torch.bincount(labels[part], minlength=10).max().item() / len(part) for part in parts]
    return float(np.mean(shares))


def test_dirichlet_is_label_skewed_and_alpha_controls_it():
    labels = balanced_labels()
    skewed = max_class_share(labels, partition(labels, 10, "dirichlet", dirichlet_alpha=0.1, seed=0))
    mild = max_class_share(labels, partition(labels, 10, "dirichlet", dirichlet_alpha=100.0, seed=0))
    iid = max_class_share(labels, partition(labels, 10, "iid", seed=0))
    assert skewed > 0.5, skewed          # most of a node's samples come from one class
    assert iid < 0.2 and mild < 0.25     # close to the 10% of a uniform mix
    parts = partition(labels, 10, "dirichlet", dirichlet_alpha=0.1, seed=0)
    again = partition(labels, 10, "dirichlet", dirichlet_alpha=0.1, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))


def test_too_many_samples_per_node_is_a_clear_error():
    with pytest.raises(DataError) as info:
        partition(torch.zeros(1000, dtype=torch.int64), 50, "contiguous", samples_per_node=200)
    message = str(info.value)
    assert "data.samples_per_node=200" in message and "topology.nodes=50" in message and "1000" in message
    with pytest.raises(DataError, match="topology.nodes=8"):
        partition(torch.zeros(5, dtype=torch.int64), 8, "iid")
    with pytest.raises(DataError, match="data.partition"):
        partition(torch.zeros(10, dtype=torch.int64), 2, "stripes")


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 400), nodes=st.integers(1, 30), classes=st.integers(1, 12),
       scheme=st.sampled_from(["contiguous", "iid", "dirichlet"]), per_node=st.integers(0, 40),
       alpha=st.floats(0.01, 50.0), seed=st.integers(0, 2**31 - 1))
def test_partition_properties(size, nodes, classes, scheme, per_node, alpha, seed):
    labels = torch.from_numpy(np.random.default_rng(seed).integers(0, classes, size))
    if (per_node and per_node * nodes > size) or (not per_node and size < nodes):
        with pytest.raises(DataError):
            partition(labels, nodes, scheme, per_node, alpha, seed)
        return
    parts = partition(labels, nodes, scheme, per_node, alpha, seed)
    everything = assert_disjoint(parts)
    assert int(everything.min()) >= 0 and int(everything.max()) < size
    sizes = [len(part) for part in parts]
    if per_node:
        assert sizes == [per_node] * nodes
    else:
        assert sum(sizes) == size and max(sizes) - min(sizes) <= 1


# ---------------------------------------------------------------------------------------------- digits

def test_digits_loads_ten_classes_of_64_pixels():
    splits = load_dataset(DataConfig(name="digits"), seed=0)
    assert splits.num_classes == 10 and splits.input_shape == (1, 8, 8)
    assert int(np.prod(splits.input_shape)) == 64
    assert len(splits.train) + len(splits.test) == 1797
    assert len(splits.test) == round(1797 * 0.2)
    assert splits.train.x.dtype == torch.uint8  # stored compactly
    inputs, labels = splits.train.batch(torch.arange(len(splits.train)))
    assert inputs.dtype == torch.float32 and labels.dtype == torch.int64
    assert abs(inputs.mean().item()) < 1e-3 and abs(inputs.std().item() - 1) < 1e-2
    assert set(labels.tolist()) == set(range(10))
    assert torch.equal(splits.train.labels, labels)


def test_digits_are_scikit_learns_read_without_importing_scikit_learn():
    """Every node process loads the digits: reading sklearn's bundled file directly saves each one the
    second or more that importing scikit-learn costs, and gives exactly load_digits' arrays."""
    import subprocess
    import sys
    from sklearn.datasets import load_digits
    from qtd.data.datasets import digits_arrays
    images, labels = digits_arrays()
    bunch = load_digits()
    assert np.array_equal(images, bunch.images) and np.array_equal(labels, bunch.target)
    code = ("import sys; from qtd.data import load_dataset; from qtd.config import DataConfig; "
            "load_dataset(DataConfig(name='digits')); print('sklearn' in sys.modules)")
    from tests.harness import REPO, child_env
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=child_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr[-2000:]


def test_digits_split_is_seeded_and_eval_on_train_keeps_everything():
    a, b = load_dataset(DataConfig(), seed=0), load_dataset(DataConfig(), seed=0)
    c = load_dataset(DataConfig(), seed=1)
    assert torch.equal(a.test.x, b.test.x) and not torch.equal(a.test.x, c.test.x)
    everything = load_dataset(DataConfig(eval_on="train"), seed=0)
    assert len(everything.train) == 1797 and everything.test is everything.train


def test_the_evaluated_samples_follow_eval_on_and_eval_samples_and_span_every_node():
    from qtd.config import Config, DataConfig as Data, TopologyConfig
    from qtd.engine.problem import build_problem

    def problem(**data):
        return build_problem(Config(topology=TopologyConfig(nodes=4), data=Data(**data)))

    assert torch.equal(problem().eval_indices, torch.arange(len(problem().eval_set)))
    train = problem(eval_on="train", samples_per_node=100)
    assert train.eval_set is train.splits.train and torch.equal(train.eval_indices, torch.cat(train.parts))
    subset = problem(eval_on="train", samples_per_node=100, eval_samples=100).eval_indices
    assert len(subset) == 100 and torch.equal(subset, problem(eval_on="train", samples_per_node=100,
                                                                  eval_samples=100).eval_indices)
    owners = {node for node, part in enumerate(train.parts) for i in subset.tolist() if i in set(part.tolist())}
    assert owners == {0, 1, 2, 3}  # a seeded subset of every node's samples, not node 0's first 100
    assert len(set(subset.tolist())) == 100


# ---------------------------------------------------------------------------------------------- synthetic

def test_synthetic_is_seeded_small_and_learnable():
    from sklearn.linear_model import LogisticRegression

    splits = load_dataset(DataConfig(name="synthetic"), seed=7)
    again = load_dataset(DataConfig(name="synthetic"), seed=7)
    assert torch.equal(splits.train.x, again.train.x)
    assert not torch.equal(splits.train.x, load_dataset(DataConfig(name="synthetic"), seed=8).train.x)
    assert splits.input_shape == (20,) and splits.num_classes == 10
    classifier = LogisticRegression(max_iter=500).fit(splits.train.x.numpy(), splits.train.labels.numpy())
    assert classifier.score(splits.test.x.numpy(), splits.test.labels.numpy()) > 0.8  # chance is 0.1


# ---------------------------------------------------------------------------------------------- IDX files

def test_idx_reader_reads_the_shared_mnist(mnist_dir):
    images = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (10000,) and sorted(labels.unique().tolist()) == list(range(10))
    assert int(images.max()) == 255 and int(images.min()) == 0
    # the first test digit of MNIST is a 7, the second a 2
    assert labels[:2].tolist() == [7, 2]


def test_mnist_idx_dataset_is_normalised_and_fits_the_paper_partition(mnist_dir):
    splits = load_dataset(DataConfig(name="mnist_idx", root=str(mnist_dir), eval_on="train"), seed=0)
    assert len(splits.train) == 10000 and splits.test is splits.train
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10
    assert splits.train.x.dtype == torch.uint8
    inputs, labels = splits.train.batch(torch.arange(10000))
    assert inputs.dtype == torch.float32 and labels.dtype == torch.int64
    assert abs(inputs.mean().item()) < 1e-3 and abs(inputs.std().item() - 1) < 1e-3
    parts = partition(splits.train.labels, 50, "contiguous", samples_per_node=200)
    assert len(assert_disjoint(parts)) == 10000
    held_out = load_dataset(DataConfig(name="mnist_idx", root=str(mnist_dir)), seed=0)
    assert (len(held_out.train), len(held_out.test)) == (8000, 2000)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_idx_round_trip(tmp_path, dtype, name):
    array = (np.arange(2 * 3 * 5).reshape(2, 3, 5) - 7).astype(dtype) if dtype != np.uint8 else \
        np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    path = write_idx(tmp_path / name, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    back = read_idx(path)
    assert back.shape == (2, 3, 5) and np.array_equal(back.numpy(), array)


def decompressed_mnist_labels(mnist_dir) -> bytes:
    return gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:5000], "truncated"),                          # short data
    (lambda raw: raw[:6], "truncated inside its header"),
    (lambda raw: raw + b"\x00" * 3, "bytes after"),                 # trailing garbage
    (lambda raw: b"GIF89a" + raw[6:], "not an IDX file"),           # another kind of file
    (lambda raw: raw[:2] + b"\x42" + raw[3:], "unknown type code"),
    (lambda raw: gzip.compress(raw)[:-100], "broken gzip"),         # cut gzip stream
])
def test_idx_reader_rejects_damaged_files(tmp_path, mnist_dir, damage, message):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(damage(decompressed_mnist_labels(mnist_dir)))
    with pytest.raises(DataError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def copy_mnist(mnist_dir, target, labels_bytes=None):
    target.mkdir(exist_ok=True)
    (target / "t10k-images-idx3-ubyte.gz").write_bytes((mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes())
    labels = labels_bytes if labels_bytes is not None else (mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (target / "t10k-labels-idx1-ubyte.gz").write_bytes(labels)


def test_mnist_idx_names_data_root_when_a_file_is_truncated(tmp_path, mnist_dir):
    truncated = (mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()[:1000]
    copy_mnist(mnist_dir, tmp_path / "mnist", truncated)
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(name="mnist_idx", root=str(tmp_path / "mnist")))
    assert "data.root" in str(info.value) and "t10k-labels-idx1-ubyte.gz" in str(info.value)


def test_mnist_idx_missing_or_empty_root_names_the_expected_files(tmp_path):
    with pytest.raises(DataError, match="data.root=.*not a directory"):
        load_dataset(DataConfig(name="mnist_idx", root=str(tmp_path / "nowhere")))
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(name="mnist_idx", root=str(tmp_path)))
    assert "train-images-idx3-ubyte" in str(info.value) and "t10k-images-idx3-ubyte" in str(info.value)


def test_mnist_idx_images_without_labels_is_an_error(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28), dtype=np.uint8))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte"):
        load_dataset(DataConfig(name="mnist_idx", root=str(tmp_path)))


def test_mnist_idx_uses_both_splits_and_accepts_dotted_names(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images.idx3-ubyte", rng.integers(0, 256, (30, 6, 6), dtype=np.uint8))
    write_idx(tmp_path / "train-labels.idx1-ubyte", np.arange(30, dtype=np.uint8) % 4)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (12, 6, 6), dtype=np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(12, dtype=np.uint8) % 4)
    splits = load_dataset(DataConfig(name="mnist_idx", root=str(tmp_path)))
    assert (len(splits.train), len(splits.test)) == (30, 12)
    assert splits.num_classes == 4 and splits.input_shape == (1, 6, 6)


def test_mnist_idx_rejects_label_count_mismatch(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((5, 4, 4), dtype=np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4, dtype=np.uint8))
    with pytest.raises(DataError, match="one label per image"):
        load_dataset(DataConfig(name="mnist_idx", root=str(tmp_path)))


# ---------------------------------------------------------------------------------------------- torchvision

@pytest.mark.parametrize("name, layout", [("mnist", "MNIST/raw"), ("fashion_mnist", "FashionMNIST/raw"),
                                          ("cifar10", "cifar-10-batches-py")])
def test_torchvision_missing_root_names_root_and_download(tmp_path, name, layout):
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(name=name, root=str(tmp_path), download=False))
    message = str(info.value)
    assert "data.root" in message and "data.download" in message and layout in message
    with pytest.raises(DataError, match="needs data.root"):
        load_dataset(DataConfig(name=name))


def test_torchvision_mnist_root_holding_loose_idx_files_suggests_mnist_idx(mnist_dir):
    with pytest.raises(DataError, match="data.name=mnist_idx"):
        load_dataset(DataConfig(name="mnist", root=str(mnist_dir)))


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_torchvision_mnist_from_a_local_root(tmp_path, name, folder):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", 30), ("t10k", 20)):
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28), dtype=np.uint8))
        write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(count, dtype=np.uint8) % 10)
    splits = load_dataset(DataConfig(name=name, root=str(tmp_path)))
    assert (len(splits.train), len(splits.test)) == (30, 20)
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10
    assert splits.train.x.dtype == torch.uint8
    inputs, _ = splits.train.batch(torch.arange(30))
    assert abs(inputs.mean().item()) < 1e-3


# ---------------------------------------------------------------------------------------------- samplers

def small_dataset(size: int = 100) -> ArrayDataset:
    x = torch.arange(size, dtype=torch.float32).unsqueeze(1)  # each input is its own index
    return ArrayDataset(x, torch.arange(size) % 3, num_classes=3)


def test_node_sampler_draws_only_its_own_samples_once_per_epoch():
    dataset = small_dataset()
    own = torch.tensor([3, 10, 11, 42, 57, 58, 90])
    sampler = NodeSampler(dataset, own, seed=0)
    drawn = []
    for _ in range(4):  # 28 samples = 4 local epochs, drawn in batches that straddle epochs
        inputs, labels = sampler.sample(7)
        assert torch.equal(labels, inputs[:, 0].long() % 3)
        drawn.append(inputs[:, 0].long())
    drawn = torch.cat(drawn)
    assert set(drawn.tolist()) <= set(own.tolist())
    for epoch in drawn.split(7):
        assert sorted(epoch.tolist()) == own.tolist()
    odd = torch.cat([sampler.next_indices(5) for _ in range(7)])  # 35 = 5 epochs across batch borders
    assert torch.equal(torch.bincount(odd, minlength=100)[own], torch.full((7,), 5))


def test_node_sampler_is_reproducible_and_seed_dependent():
    dataset = small_dataset()
    own = torch.arange(20, 80)
    first = [NodeSampler(dataset, own, seed=11).sample(16)[0] for _ in range(2)]
    assert torch.equal(first[0], first[1])
    assert not torch.equal(first[0], NodeSampler(dataset, own, seed=12).sample(16)[0])


def test_node_sampler_state_round_trips_through_a_checkpoint(tmp_path):
    dataset = small_dataset()
    sampler = NodeSampler(dataset, torch.arange(0, 100, 3), seed=5)
    for _ in range(5):
        sampler.sample(9)
    torch.save(sampler.state_dict(), tmp_path / "sampler.pt")
    expected = [sampler.sample(9)[0] for _ in range(6)]
    resumed = NodeSampler(dataset, torch.arange(0, 100, 3), seed=999)
    resumed.load_state_dict(torch.load(tmp_path / "sampler.pt", weights_only=True))
    assert all(torch.equal(a, resumed.sample(9)[0]) for a in expected)
    other = NodeSampler(dataset, torch.arange(0, 100, 4), seed=5)
    with pytest.raises(CheckpointError, match="local samples"):
        other.load_state_dict(torch.load(tmp_path / "sampler.pt", weights_only=True))


def test_node_sampler_rejects_bad_indices_and_batch_sizes():
    dataset = small_dataset(10)
    with pytest.raises(DataError):
        NodeSampler(dataset, torch.tensor([], dtype=torch.int64), seed=0)
    with pytest.raises(DataError, match="0..9"):
        NodeSampler(dataset, torch.tensor([1, 10]), seed=0)
    with pytest.raises(DataError, match="batch size"):
        NodeSampler(dataset, torch.tensor([1, 2]), seed=0).sample(0)


# ---------------------------------------------------------------------------------------------- datasets

def test_array_dataset_normalises_per_batch_and_validates():
    x = torch.tensor([[0, 255], [51, 102]], dtype=torch.uint8)
    dataset = ArrayDataset(x, torch.tensor([0, 1]), num_classes=2, mean=51.0, std=51.0)
    inputs, labels = dataset.batch(torch.tensor([1, 0]))
    assert torch.allclose(inputs, torch.tensor([[0.0, 1.0], [-1.0, 4.0]]))
    assert labels.tolist() == [1, 0] and dataset.input_shape == (2,)
    with pytest.raises(DataError, match="labels must lie in 0..1"):
        ArrayDataset(x, torch.tensor([0, 2]), num_classes=2)
    with pytest.raises(DataError, match="shape"):
        ArrayDataset(x, torch.tensor([0, 1, 1]), num_classes=2)
    with pytest.raises(DataError, match="differ in shape"):
        DatasetSplits(dataset, ArrayDataset(torch.zeros(2, 3), torch.tensor([0, 1]), 2))


# ---------------------------------------------------------------------------------------------- your own data

def write_module(tmp_path, monkeypatch, source: str, name: str = "my_data") -> str:
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_bring_your_own_dataset_by_import_path():
    splits = load_dataset(DataConfig(name="examples.byo_model_data:make_spirals"), seed=3)
    assert splits.input_shape == (2,) and splits.num_classes == 3
    assert len(splits.train) == len(splits.test) == 1200
    again = load_dataset(DataConfig(name="examples.byo_model_data:make_spirals"), seed=3)
    assert torch.equal(splits.train.x, again.train.x)


def test_factory_gets_root_and_seed_and_may_return_one_uint8_dataset(tmp_path, monkeypatch):
    module = write_module(tmp_path, monkeypatch, (
        "import numpy as np\n"
        "seen = {}\n"
        "def make(root, seed):\n"
        "    seen.update(root=root, seed=seed)\n"
        "    x = np.random.default_rng(seed).integers(0, 256, (50, 3, 4, 4), dtype=np.uint8)\n"
        "    return x, np.arange(50) % 5\n"))
    splits = load_dataset(DataConfig(name=f"{module}:make", root="/data/here", test_fraction=0.2), seed=9)
    import my_data
    assert my_data.seen == {"root": "/data/here", "seed": 9}
    assert (len(splits.train), len(splits.test)) == (40, 10)
    assert splits.num_classes == 5 and splits.train.x.dtype == torch.uint8
    inputs, _ = splits.train.batch(torch.arange(40))
    assert torch.allclose(inputs.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)  # per-channel standardised


@pytest.mark.parametrize("source, message", [
    ("def make():\n    return 42\n", "returned a int"),
    ("def make():\n    raise OSError('disk on fire')\n", "disk on fire"),
    ("import torch\ndef make():\n    return torch.zeros(4, 2), torch.tensor([0.5, 1, 2, 3])\n", "integer class ids"),
    ("import torch\ndef make():\n    return (torch.zeros(4, 2), torch.arange(4)), (torch.zeros(4, 3), torch.arange(4))\n",
     "test samples"),
])
def test_bad_data_factories_name_data_name(tmp_path, monkeypatch, source, message):
    module = write_module(tmp_path, monkeypatch, source, name=f"bad_data_{abs(hash(source))}")
    with pytest.raises(DataError, match=message) as info:
        load_dataset(DataConfig(name=f"{module}:make"))
    assert "data.name" in str(info.value)


def test_unimportable_data_factory_is_a_clear_error():
    with pytest.raises(DataError, match="data.name=.*cannot import module 'no_such_pkg_qtd.data'"):
        load_dataset(DataConfig(name="no_such_pkg_qtd.data:make"))
    with pytest.raises(DataError, match="has no attribute 'nothing_here'"):
        load_dataset(DataConfig(name="examples.byo_model_data:nothing_here"))


def test_torch_dataset_items_are_read_into_memory():
    from torch.utils.data import TensorDataset

    from qtd.data.custom import to_splits

    train = TensorDataset(torch.randn(20, 1, 5, 5), torch.arange(20) % 2)
    test = TensorDataset(torch.randn(6, 1, 5, 5), torch.arange(6) % 2)
    splits = to_splits((train, test), DataConfig(), seed=0)
    assert splits.input_shape == (1, 5, 5) and splits.num_classes == 2
    assert torch.equal(splits.test.batch(torch.arange(6))[0], test.tensors[0])


def test_a_failed_download_says_what_to_do(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets

    class Offline:
        def __init__(self, root, train, download):
            raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(name="mnist", root=str(tmp_path), download=True))
    message = str(info.value)
    assert "data.download=true failed" in message and "no route to host" in message
    assert "data.download=false" in message and "MNIST/raw" in message


def test_import_paths_resolve_from_the_current_directory(tmp_path, monkeypatch):
    import os
    import sys

    (tmp_path / "cwd_only_data.py").write_text(
        "import torch\ndef make():\n    return torch.randn(10, 3), torch.arange(10) % 2\n")
    monkeypatch.chdir(tmp_path)
    # as under the `qtd` console script: neither "" nor the current directory is on sys.path
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd(), str(tmp_path))])
    splits = load_dataset(DataConfig(name="cwd_only_data:make", eval_on="train"))
    assert len(splits.train) == 10 and sys.path[-1] == str(tmp_path)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_datasets_and_samplers_work_on_the_node_device(device):
    splits = load_dataset(DataConfig(), seed=0)
    dataset = splits.train.to(device)
    sampler = NodeSampler(dataset, torch.arange(100), seed=0)
    inputs, labels = sampler.sample(8)
    assert inputs.device.type == labels.device.type == device
    reference = NodeSampler(splits.train, torch.arange(100), seed=0).sample(8)
    torch.testing.assert_close(inputs.cpu(), reference[0])
    assert torch.equal(labels.cpu(), reference[1])


# ---------------------------------------------------------------------------------------------- classes, grayscale

def _fake_cifar10(root, per_batch: int = 2100, test: int = 300) -> None:
    """cifar-10-batches-py as torchvision reads it (pickled dicts of (N, 3072) uint8 rows, channel-major),
    random pixels; the training batches hold classes 0 and 1 alternately and every 21st image of class 2."""
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(count: int) -> dict:
        labels = [2 if k % 21 == 20 else k % 2 for k in range(count)]
        return {"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8), "labels": labels}

    for k in range(1, 6):
        (folder / f"data_batch_{k}").write_bytes(pickle.dumps(batch(per_batch)))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(test)))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))


def _accept_generated_files(monkeypatch) -> None:
    """torchvision checks CIFAR-10's files against the official MD5 sums, which generated files cannot have;
    everything else (the pickles, the shapes, qtd's loading) is the real path."""
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)


def test_classes_keep_and_relabel_and_grayscale_is_luma(tmp_path, monkeypatch):
    _fake_cifar10(tmp_path)
    _accept_generated_files(monkeypatch)
    rgb = load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    assert rgb.input_shape == (3, 32, 32) and len(rgb.train) == 10500
    both = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), classes=(1, 0), grayscale=True))
    assert both.input_shape == (1, 32, 32) and both.num_classes == 2 and len(both.train) == 10000
    kept = rgb.train.labels != 2
    assert torch.equal(both.train.labels, 1 - rgb.train.labels[kept])  # class 1 is listed first: label 0
    r, g, b = rgb.train.x[kept][:, 0].float(), rgb.train.x[kept][:, 1].float(), rgb.train.x[kept][:, 2].float()
    assert torch.equal(both.train.x[:, 0], (0.299 * r + 0.587 * g + 0.114 * b).round().to(torch.uint8))
    inputs, _ = both.train.batch(torch.arange(len(both.train)))
    assert abs(inputs.mean().item()) < 1e-3 and abs(inputs.std().item() - 1) < 1e-2  # standardised again
    with pytest.raises(DataError, match=r"classes 0\.\.9, not 12"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), classes=(0, 12)))
    with pytest.raises(DataError, match="grayscale=true needs images"):
        load_dataset(DataConfig(name="synthetic", grayscale=True))
    with pytest.raises(ConfigError, match="data.classes"):
        DataConfig(classes=(3, 3))


def test_the_papers_cifar10_configs_run_on_generated_data_of_the_same_shape(tmp_path, monkeypatch):
    from qtd.config import load_config
    from qtd.sim import simulate

    _fake_cifar10(tmp_path)
    _accept_generated_files(monkeypatch)
    paper = Path(__file__).resolve().parents[1] / "configs" / "paper" / "cifar10"
    configs = sorted(paper.glob("*.yaml"))
    assert [p.stem for p in configs] == ["async_dsgd", "dsgd", "qdsgd", "quantimed"]
    for path in configs:
        config = load_config(path, [f"data.root={tmp_path}", "run.iterations=2", "run.eval_every=2",
                                    f"run.out_dir={tmp_path / path.stem}", "run.progress=false"])
        assert config.data.classes == (0, 1) and config.data.grayscale and config.model.hidden == (30,)
        result = simulate(config, write=False)
        assert result.summary["nodes"] == 50 and result.summary["iterations"] >= 2
        assert math.isfinite(result.summary["eval_loss"]), result.summary
    quantimed = load_config(paper / "quantimed.yaml", [f"data.root={tmp_path}"])
    from qtd.engine.problem import build_problem
    problem = build_problem(quantimed)
    assert sum(p.numel() for p in problem.template.parameters()) == 1024 * 30 + 30 + 30 * 2 + 2
