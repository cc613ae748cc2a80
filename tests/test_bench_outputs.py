"""Quick benchmark runs never write over the committed results in benchmarks/results/.

Every benchmark chooses its output directory with ``_common.results_dir`` before doing any work; these tests
run each benchmark's ``main`` with that call intercepted, so they check the real argument handling of every
script in benchmarks/ in seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import pytest

from qtd.cli.main import available_benchmarks
from tests.harness import REPO

BENCHMARKS = REPO / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the scripts import their shared helpers as `_common`
import _common  # noqa: E402


class Chosen(Exception):
    """Raised in place of creating the output directory: the benchmark stops before any work."""


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    return module


def _main(module, argv: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [f"{module.NAME}.py", *argv])
    if module.main.__code__.co_argcount:  # compress_throughput takes argv, the others read sys.argv
        module.main(argv)
    else:
        module.main()


def _chosen_dir(module, argv: list[str], monkeypatch) -> Path:
    def intercept(out, quick, benchmark):
        raise Chosen((out, quick, benchmark))

    monkeypatch.setattr(module, "results_dir", intercept)
    with pytest.raises(Chosen) as info:
        _main(module, argv, monkeypatch)
    out, quick, _ = info.value.args[0]
    return Path(out) if out is not None else (_common.QUICK_RESULTS if quick else _common.RESULTS)


def _committed() -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in _common.RESULTS.iterdir()}


# gpu_check has no --quick: its --dry-run never writes benchmarks/results/ (tests/test_gpu_check.py checks it)
@pytest.mark.parametrize("name", sorted(set(available_benchmarks()) - {"gpu_check"}))
def test_every_benchmark_writes_quick_runs_outside_the_committed_results(name, monkeypatch, tmp_path):
    module = _module(name)
    assert getattr(module, "results_dir", None) is _common.results_dir, f"{name} does not use results_dir"
    quick = _chosen_dir(module, ["--quick"], monkeypatch)
    assert quick.resolve() != _common.RESULTS.resolve() and quick == _common.QUICK_RESULTS, quick
    assert _chosen_dir(module, [], monkeypatch) == _common.RESULTS  # a full run reproduces the committed one
    assert _chosen_dir(module, ["--quick", "--out", str(tmp_path)], monkeypatch) == tmp_path
    before = _committed()
    monkeypatch.undo()
    for out in (str(_common.RESULTS), str(REPO / "benchmarks" / ".." / "benchmarks" / "results")):
        with pytest.raises(SystemExit) as info:
            _main(module, ["--quick", "--out", out], monkeypatch)
        assert "a --quick run does not write into" in str(info.value.code), info.value.code
    assert _committed() == before


def test_results_dir_refuses_the_committed_results_for_quick_runs_only(tmp_path):
    with pytest.raises(SystemExit, match="committed results"):
        _common.results_dir(_common.RESULTS, True, "x")
    assert _common.results_dir(None, False, "x") == _common.RESULTS
    assert _common.results_dir(tmp_path / "q", True, "x") == tmp_path / "q" and (tmp_path / "q").is_dir()
