"""The fused kernels compile once, before a run: warm_up, numba's on-disk cache, one compiler per machine.

Each check runs fresh processes against an empty NUMBA_CACHE_DIR, so what is measured is a first run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qtd.compress import _numba_kernels
from tests.harness import REPO, child_env, collect, run_qtd

pytestmark = pytest.mark.skipif(not _numba_kernels.AVAILABLE, reason="numba is not available here")

KERNELS = ("_quantize_pack_kernel", "_unpack_dequantize_kernel", "_quantize_codes", "_pack", "_unpack",
           "_quantize_pack_blocks_kernel", "_unpack_dequantize_blocks_kernel")

# In a fresh process: warm up, then run the real calls a node makes (another size, other widths) and report
# numba's compile statistics before and after them.
PROBE = f"""
import json, torch
from qtd.compress import _numba_kernels as k, warm_up, encode_message, decode_message, quantize, pack_bits, unpack_bits
def stats():
    return {{name: {{"hits": sum(getattr(k, name).stats.cache_hits.values()),
                    "misses": sum(getattr(k, name).stats.cache_misses.values()),
                    "compiled": len(getattr(k, name).signatures)}} for name in {KERNELS!r}}}
from qtd.compress import warmup
cached = warmup._numba_cached(warmup._QUANTIZED_KERNELS + warmup._BLOCKED_KERNELS + warmup._PACKING_KERNELS)
seconds = warm_up("cpu", 4, block_sign=True, block_size=64)  # every kernel: one-grid, block-wise, Block-Sign
before = stats()
x = torch.randn(10_001)
for bits in (1, 3, 4, 8):
    decode_message(encode_message(x, bits, sender=1, iteration=7))
    decode_message(encode_message(x, bits, sender=1, iteration=7, block_size=256))
    codes = quantize(x, bits, key=3).codes
    unpack_bits(pack_bits(codes, bits), bits, codes.numel())
print(json.dumps({{"seconds": seconds, "before": before, "after": stats(), "cache_dir": str(k.CACHE_DIR),
                  "cached": cached}}))
"""


def _probe(cache: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PROBE], cwd=REPO, env=child_env({"NUMBA_CACHE_DIR": str(cache)}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _report(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_warm_up_compiles_every_kernel_once_and_later_calls_compile_nothing(tmp_path):
    cold = _report(collect([_probe(tmp_path)], timeout=300)[0])
    assert cold["cache_dir"] == str(tmp_path) and cold["cached"] is False
    for name in KERNELS:
        assert cold["before"][name]["misses"] >= 1 and cold["before"][name]["compiled"] == 1, (name, cold)
        assert cold["after"][name]["compiled"] == cold["before"][name]["compiled"], (name, cold)  # nothing new
    warm = _report(collect([_probe(tmp_path)], timeout=300)[0])  # the next process: from the cache
    assert warm["cached"] is True  # so it loads without waiting for any other process
    for name in KERNELS:
        assert warm["before"][name] == {"hits": 1, "misses": 0, "compiled": 1}, (name, warm)
    assert warm["seconds"] < cold["seconds"], (warm["seconds"], cold["seconds"])


@pytest.mark.slow
def test_processes_starting_together_compile_once_and_the_others_load_the_cache(tmp_path):
    """What the 8 nodes of a first run do (python -m qtd.train warms up before joining the group)."""
    reports = [_report(r) for r in collect([_probe(tmp_path) for _ in range(3)], timeout=600)]
    compilers = [r for r in reports if any(r["before"][name]["misses"] for name in KERNELS)]
    assert len(compilers) == 1, [r["before"] for r in reports]
    for report in reports:
        if report is not compilers[0]:
            assert all(report["before"][name]["hits"] == 1 for name in KERNELS), report["before"]


def test_runs_that_use_no_kernel_do_not_even_import_numba():
    code = ("import sys; from qtd.compress import warm_up; from qtd.config import load_config; "
            "from qtd.compress import warm_up_for; "
            "assert warm_up('cpu', 16) == warm_up('cpu', None) == 0.0; "
            "warm_up_for(load_config('configs/ps_digits.yaml')); print('numba' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=child_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr[-2000:]


def test_the_cache_goes_to_a_user_directory_when_the_package_is_read_only(monkeypatch, tmp_path):
    numba = pytest.importorskip("numba")
    in_tree = Path(_numba_kernels.__file__).resolve().parent / "__pycache__"
    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    writable = {tmp_path / "xdg" / "qtd" / "numba"}  # not the package's __pycache__ (a root-owned install)
    monkeypatch.setattr(_numba_kernels, "_writable", lambda folder: folder in writable and folder != in_tree)
    assert _numba_kernels._cache_dir() == tmp_path / "xdg" / "qtd" / "numba"
    assert numba.config.CACHE_DIR == str(tmp_path / "xdg" / "qtd" / "numba")  # where numba then writes
    monkeypatch.setattr(numba.config, "CACHE_DIR", "/chosen/by/the/user")
    assert _numba_kernels._cache_dir() == Path("/chosen/by/the/user")  # NUMBA_CACHE_DIR is respected


@pytest.mark.slow
def test_a_first_run_spends_no_compile_time_inside_its_timed_iterations(tmp_path):
    """qtd launch with an empty kernel cache: each node's first iteration, beyond computing and waiting,
    is the codec's few milliseconds; compiling the kernels there took seconds (25-30 s with 8 nodes on 2 cores)."""
    out = tmp_path / "run"
    result = run_qtd(["launch", "configs/quickstart.yaml", "--set", f"run.out_dir={out}", "--set", "topology.nodes=4",
                      "--set", "run.iterations=5", "--set", "run.eval_every=5", "--set", "run.progress=false"],
                     env={"NUMBA_CACHE_DIR": str(tmp_path / "cold_cache")}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert any((tmp_path / "cold_cache").rglob("*.nbi")), "the kernels were not cached"
    for rank in range(4):
        first = json.loads((out / "nodes" / f"node_{rank:03d}.jsonl").read_text().splitlines()[0])
        codec_s = first["time_s"] - first["compute_s"] - first["wait_s"]
        assert codec_s < 0.5, (rank, first)
