import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from qtd.config import ModelConfig
from qtd.errors import ConfigError
from qtd.models import FlatModel, build_model

# every built-in model on the inputs it is meant for: (name, sample shape, classes, parameter count or None)
INTENDED = [
    ("mlp", (1, 28, 28), 10, 784 * 50 + 50 + 50 * 10 + 10),                      # the paper's 784-50-10
    ("mlp_deep", (1, 32, 32), 10, 1024 * 30 + 30 + 30 * 20 + 20 + 20 * 20 + 20 + 20 * 25 + 25 + 25 * 10 + 10),
    ("cnn", (1, 8, 8), 10, None),
    ("cnn", (1, 28, 28), 10, None),
    ("cnn", (3, 32, 32), 10, None),
    ("comp_ams_cnn", (1, 28, 28), 10, None),
    ("resnet18", (3, 16, 16), 10, None),  # CIFAR-like, downsized to keep the test fast on CPU
    ("linear", (64,), 10, 64 * 10 + 10),
]


@pytest.mark.parametrize("name, shape, classes, numel", INTENDED)
def test_builtin_models_train_on_their_intended_inputs(name, shape, classes, numel):
    model = build_model(ModelConfig(name=name), shape, classes, seed=0)
    flat = FlatModel(model)
    if numel is not None:
        assert flat.numel == numel
    assert flat.numel == sum(p.numel() for p in model.parameters())
    inputs, labels = torch.randn(3, *shape), torch.tensor([0, 1, classes - 1])
    logits = flat(inputs)
    assert logits.shape == (3, classes)
    F.cross_entropy(logits, labels).backward()
    assert torch.isfinite(flat.grads).all() and flat.grads.abs().sum() > 0
    for parameter in model.parameters():  # every gradient landed in the flat buffer
        assert parameter.grad.untyped_storage().data_ptr() == flat.grads.untyped_storage().data_ptr()


def test_mlp_hidden_widths_come_from_the_config():
    model = build_model(ModelConfig(name="mlp", hidden=(20, 10)), (1, 8, 8), 10)
    widths = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert widths == [(64, 20), (20, 10), (10, 10)]


def test_mlp_deep_is_the_papers_network():
    model = build_model(ModelConfig(name="mlp_deep"), (1024,), 10)
    widths = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    assert widths == [30, 20, 20, 25, 10]


def test_comp_ams_cnn_has_dropout_that_eval_turns_off():
    model = build_model(ModelConfig(name="comp_ams_cnn"), (1, 28, 28), 10, seed=0)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    fcs = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) == 2 and len(fcs) == 2
    assert all(m.p == 0.5 for m in model.modules() if isinstance(m, nn.Dropout))
    x = torch.randn(4, 1, 28, 28)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_resnet18_uses_group_norm_so_the_flat_vector_is_the_whole_model():
    model = build_model(ModelConfig(name="resnet18"), (1, 8, 8), 7)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.conv1.in_channels == 1 and model.fc.out_features == 7
    assert not any(b.is_floating_point() for b in model.buffers())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FlatModel(model)


@pytest.mark.parametrize("name, shape", [("cnn", (20,)), ("resnet18", (64,)), ("comp_ams_cnn", (1, 4, 4)),
                                         ("cnn", (1, 2, 2))])
def test_a_model_that_does_not_fit_the_data_is_a_clear_error(name, shape):
    with pytest.raises(ConfigError) as info:
        build_model(ModelConfig(name=name), shape, 10)
    message = str(info.value)
    assert f"model.name={name}" in message.replace("'", "") and "data.name" in message


def test_seeded_init_is_reproducible_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = FlatModel(build_model(ModelConfig(name="cnn"), (1, 8, 8), 10, seed=4))
    b = FlatModel(build_model(ModelConfig(name="cnn"), (1, 8, 8), 10, seed=4))
    c = FlatModel(build_model(ModelConfig(name="cnn"), (1, 8, 8), 10, seed=5))
    assert torch.equal(a.params, b.params) and not torch.equal(a.params, c.params)
    assert torch.equal(torch.random.get_rng_state(), before)


# ---------------------------------------------------------------------------------------------- FlatModel

def test_writing_the_flat_params_changes_the_module():
    module = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    reference = copy.deepcopy(module)
    flat = FlatModel(module)
    x = torch.randn(5, 3)
    assert torch.equal(flat(x), reference(x))  # wrapping keeps the weights
    assert torch.equal(flat.params[:12], reference[0].weight.detach().reshape(-1))
    flat.params.mul_(0.5)
    with torch.no_grad():
        for p in reference.parameters():
            p.mul_(0.5)
    assert torch.allclose(flat(x), reference(x))
    flat.params.zero_()
    assert torch.equal(flat(x), torch.zeros(5, 2))
    assert [(name, offset, size) for name, offset, size in flat.named_slices()] == [
        ("0.weight", 0, 12), ("0.bias", 12, 4), ("2.weight", 16, 8), ("2.bias", 24, 2)]


def test_backward_fills_the_flat_grads_and_zero_grad_clears_them():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    reference = copy.deepcopy(module)
    flat = FlatModel(module)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 1])
    F.cross_entropy(flat(x), y).backward()
    F.cross_entropy(reference(x), y).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in reference.parameters()])
    torch.testing.assert_close(flat.grads, expected)
    F.cross_entropy(flat(x), y).backward()  # autograd accumulates in place, into the same buffer
    torch.testing.assert_close(flat.grads, 2 * expected)
    flat.zero_grad()
    assert flat.grads.abs().sum() == 0
    module.zero_grad()  # sets every .grad to None ...
    flat.zero_grad()    # ... and FlatModel re-attaches its views
    F.cross_entropy(flat(x), y).backward()
    torch.testing.assert_close(flat.grads, expected)


def test_a_gradient_step_on_the_flat_buffers_matches_sgd():
    torch.manual_seed(1)
    module = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    reference = copy.deepcopy(module)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    flat = FlatModel(module)
    x, y = torch.randn(8, 6), torch.randint(3, (8,))
    for _ in range(3):
        flat.zero_grad()
        F.cross_entropy(flat(x), y).backward()
        flat.params.add_(flat.grads, alpha=-0.1)
        optimizer.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        optimizer.step()
    torch.testing.assert_close(flat.params, torch.cat([p.detach().reshape(-1) for p in reference.parameters()]))


def test_frozen_parameters_are_left_out():
    module = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    module[0].weight.requires_grad_(False)
    flat = FlatModel(module)
    assert flat.numel == 3 + 6 + 2


def test_flat_model_rejects_what_it_cannot_view():
    with pytest.raises(ConfigError, match="float64"):
        FlatModel(nn.Linear(2, 2).double())
    with pytest.raises(ConfigError, match="no trainable parameters"):
        FlatModel(nn.ReLU())
    with pytest.warns(UserWarning, match="BatchNorm"):
        FlatModel(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))


def test_check_views_notices_a_moved_module():
    module = nn.Linear(2, 2)
    flat = FlatModel(module)
    flat.check_views()
    module.double().float()  # allocates new parameter tensors
    with pytest.raises(RuntimeError, match="wrap it again"):
        flat.check_views()


@pytest.mark.cuda
def test_flat_model_on_a_gpu():
    module = build_model(ModelConfig(name="cnn"), (1, 8, 8), 10, seed=0).cuda()
    flat = FlatModel(module)
    assert flat.params.is_cuda and flat.grads.is_cuda
    F.cross_entropy(flat(torch.randn(2, 1, 8, 8, device="cuda")), torch.tensor([0, 1], device="cuda")).backward()
    assert flat.grads.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- your own model

def test_bring_your_own_model_by_import_path():
    model = build_model(ModelConfig(name="examples.byo_model_data:make_model"), (2,), 3, seed=0)
    flat = FlatModel(model)
    assert flat(torch.randn(5, 2)).shape == (5, 3)


def write_module(tmp_path, monkeypatch, name: str, source: str) -> str:
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_a_factory_without_arguments_is_called_bare(tmp_path, monkeypatch):
    module = write_module(tmp_path, monkeypatch, "my_net_bare",
                          "from torch import nn\n"
                          "def make():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n")
    model = build_model(ModelConfig(name=f"{module}:make"), (1, 8, 8), 10)
    assert isinstance(model, nn.Sequential)


@pytest.mark.parametrize("source, message", [
    ("def make(shape, classes):\n    return 'a model'\n", "not a torch.nn.Module"),
    ("from torch import nn\ndef make(shape, classes):\n    return nn.Linear(64, classes + 1)\n",
     "10 classes"),
    ("def make(shape, classes):\n    raise KeyError('oops')\n", "KeyError"),
])
def test_bad_model_factories_name_model_name(tmp_path, monkeypatch, source, message):
    module = write_module(tmp_path, monkeypatch, f"bad_net_{abs(hash(source))}", source)
    with pytest.raises(ConfigError, match=message) as info:
        build_model(ModelConfig(name=f"{module}:make"), (64,), 10)
    assert "model.name" in str(info.value)


def test_unimportable_model_is_a_clear_error():
    with pytest.raises(ConfigError, match="model.name=.*cannot import module"):
        build_model(ModelConfig(name="no_such_pkg_qtd.nets:make"), (64,), 10)
