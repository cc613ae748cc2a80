"""The layers of qtd, as its README and module docstrings draw them, checked on the source itself.

The import graph is read from every module's ``import`` statements (at module level and inside
functions alike, resolved to qtd modules), without running anything.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "qtd"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level:
        base = base[: len(base) - (level - 1)]
        return ".".join(base + ([target] if target else []))
    return target or ""


def _imports(module: str) -> set[str]:
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]  # `from . import x` imports x
        else:
            continue
        for name in names:
            while name and name not in MODULES and "." in name:
                name = name.rsplit(".", 1)[0]
            ancestor = module.startswith(name + ".")  # a package's own __init__ runs before its modules anyway
            if name in MODULES and name.startswith("qtd") and name != module and not ancestor:
                found.add(name)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def _reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_graph_reader_sees_real_imports():
    assert "qtd.algorithms.registry" in GRAPH["qtd.config.schema"]
    assert "qtd.compress.grid" in GRAPH["qtd.compress._numba_kernels"]
    assert "qtd.sim" in GRAPH["qtd.cli.sim"]  # a lazy import inside a function counts too


def test_no_import_cycle_anywhere_in_qtd():
    cycles = []
    for module in GRAPH:
        if module in _reachable(module):
            cycles.append(module)
    assert not cycles, f"modules on an import cycle: {sorted(cycles)}"


@pytest.mark.parametrize("layer, forbidden", [
    ("qtd.compress", "qtd.config"),  # pure tensor code takes numbers, not configs
    ("qtd.compress", "qtd.comm"),
    ("qtd.algorithms", "qtd.comm"),
    ("qtd.topology", "qtd.comm"),
    ("qtd.sim", "qtd.comm"),  # the simulator shares everything but the network
    ("qtd.engine.points", "qtd.comm"),
    ("qtd.engine.summary", "qtd.comm"),
])
def test_pure_layers_never_reach_the_side_effect_layers(layer, forbidden):
    offenders = {m: sorted(r for r in _reachable(m) if r == forbidden or r.startswith(forbidden + "."))
                 for m in MODULES if m == layer or m.startswith(layer + ".")}
    offenders = {m: r for m, r in offenders.items() if r}
    assert not offenders, f"{layer} reaches {forbidden}: {offenders}"


def _imports_torch_distributed(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        if any(name == "torch.distributed" or name.startswith("torch.distributed.") for name in names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "distributed"
                                                                               for a in node.names):
            return True
    return False


def test_only_comm_calls_torch_distributed():
    """The launcher wrapper (qtd.engine.torchrun) runs torchrun itself, which lives in torch.distributed."""
    callers = [m for m, p in MODULES.items() if _imports_torch_distributed(p)
               and not m.startswith("qtd.comm") and m != "qtd.engine.torchrun"]
    assert not callers, f"torch.distributed outside qtd.comm: {callers}"


def test_checking_a_config_does_not_load_torch():
    code = ("import sys; from qtd.config import load_config; load_config('configs/quickstart.yaml', []); "
            "import qtd.engine.resume, qtd.engine.launch; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_no_module_level_mutable_state_in_comm():
    for module, path in MODULES.items():
        if not module.startswith("qtd.comm"):
            continue
        tree = ast.parse(path.read_text())
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.Global)], f"`global` in {module}"
        for node in tree.body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(getattr(node, "value", None),
                                                                           (ast.List, ast.Dict, ast.Set, ast.Call)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [t.id for t in targets if isinstance(t, ast.Name)]
                assert all(n.isupper() or n == "__all__" for n in names), f"module-level state {names} in {module}"


def test_no_file_in_qtd_over_400_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"split these (one job per file): {long}"


def test_algorithm_names_are_compared_only_in_the_registry():
    """What an algorithm is lives in one place: no code outside the registry tests a name."""
    for module, path in MODULES.items():
        if module == "qtd.algorithms.registry":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                text = ast.unparse(node)
                assert "algorithm.name" not in text and "algo.name" not in text and "spec.name" not in text, \
                    f"{module}: {text}"
