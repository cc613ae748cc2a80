"""benchmarks/gpu_check.py without a GPU: its dry run for real, a failing step, and bad arguments.

The GPU run itself (`bash benchmarks/gpu_check.sh` on a machine with one NVIDIA GPU) writes
benchmarks/results/gpu_check.json. Here every step that can run on a CPU runs at a tiny size, and the steps
that need CUDA (or triton, where it is not installed) must be listed as skipped, each with its reason.
"""

import json
import os
import subprocess
import sys

import torch

from qtd.compress.backend import triton_available
from tests.harness import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"
STEPS = ["environment", "triton_bit_exact", "triton_throughput", "deadline_observed", "deadline_run", "sim",
         "cuda_tests"]
CUDA_TESTS = ["tests/test_data.py::test_datasets_and_samplers_work_on_the_node_device[cuda]",
              "tests/test_deadline.py::test_on_a_gpu_a_micro_batch_counts_once_its_kernels_finished",
              "tests/test_models.py::test_flat_model_on_a_gpu",
              "tests/test_sim.py::test_simulated_messages_are_the_wire_messages_bit_for_bit[cuda]"]
TRITON_CUDA_TESTS = [f"tests/test_compress_triton.py::test_on_a_gpu_the_compiled_kernels_give_the_cpu_reference"
                     f"_bytes[{bits}]" for bits in range(1, 9)]


def gpu_check(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OUT"}  # $OUT would receive copies of the results
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_dry_run_runs_every_step_a_cpu_can_and_names_the_ones_it_skipped(tmp_path):
    result = gpu_check("--dry-run", "--out", str(tmp_path), timeout=400)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    summary, steps = data["summary"], {step["name"]: step for step in data["steps"]}
    assert list(steps) == STEPS
    triton = triton_available()
    expected_skips = {"deadline_observed", "cuda_tests"} | (set() if triton else {"triton_bit_exact",
                                                                                    "triton_throughput"})
    assert set(summary["steps_skipped"]) == expected_skips
    assert summary["all_passed"] and summary["dry_run"] and summary["complete"] and not summary["steps_failed"]
    assert set(summary["steps_passed"]) == set(STEPS) - expected_skips
    assert "needs CUDA" in steps["deadline_observed"]["message"]
    assert steps["cuda_tests"]["message"].startswith("no CUDA device: collected the")
    assert sorted(steps["cuda_tests"]["details"]["collected"]) == sorted(CUDA_TESTS + (TRITON_CUDA_TESTS if triton
                                                                                      else []))
    run = steps["deadline_run"]["details"]
    assert run["backend"] == "gloo" and run["iterations"] == 30 and run["nodes"] == 1
    assert 0 < summary["micro_batch_p99_s"] and summary["deadline_overshoot_p99_s"] <= summary["overshoot_bound_s"]
    assert steps["sim"]["details"]["nodes"] == 8 and steps["sim"]["details"]["device"] == "cpu"
    if triton:
        exact = steps["triton_bit_exact"]["details"]
        assert exact["mismatch_count"] == 0 and exact["cases"] == 48 and not exact["compiled"]
        assert summary["copy_gbps"] > 0 and set(summary["quant_pack_gbps"]) == {"1", "2", "4", "8"}
        assert summary["target_met"] is None  # interpreter timings are not a GPU figure
        assert steps["triton_throughput"]["details"]["verified_output"]["packed_equal"]
        assert (tmp_path / "gpu_check.png").is_file()
    else:
        assert "triton is not importable" in steps["triton_bit_exact"]["message"]
    assert "not_shown_on_one_gpu" in data and "gloo" in data["not_shown_on_one_gpu"]
    table = result.stdout.split("gpu_check (dry run", 1)[1]
    for name in STEPS:
        assert f"\n{name} " in table
    assert "ALL PASSED" in table and "deadline run (gloo): overshoot p99" in table


def test_a_failing_step_is_recorded_and_the_next_steps_still_run(tmp_path):
    result = gpu_check("--dry-run", "--out", str(tmp_path), "--steps", "environment,cuda_tests",
                       "--timeout", "environment=0.01", timeout=200)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())["summary"]
    steps = {step["name"]: step for step in json.loads((tmp_path / "gpu_check.json").read_text())["steps"]}
    assert summary["steps_failed"] == ["environment"] and not summary["all_passed"] and summary["complete"]
    assert "timed out" in steps["environment"]["message"]
    assert steps["cuda_tests"]["details"]["collected"]  # ran after the failure
    assert summary["steps_not_selected"] == [s for s in STEPS if s not in ("environment", "cuda_tests")]
    assert "NOT ALL PASSED" in result.stdout


def test_bad_arguments_and_a_missing_gpu_end_with_one_line(tmp_path):
    cases = [
        (["--dry-run", "--out", str(REPO / "benchmarks" / "results")], "--dry-run never writes benchmarks/results/"),
        (["--dry-run", "--out", str(tmp_path), "--steps", "sim,warp"], "unknown step warp"),
        (["--dry-run", "--out", str(tmp_path), "--timeout", "sim=soon"], "use STEP=SECONDS"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--out", str(tmp_path)], "torch sees no CUDA device here"))
    for args, message in cases:
        result = gpu_check(*args, timeout=120)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("gpu_check: error: ") and message in lines[0], lines
    assert not (tmp_path / "gpu_check.json").exists()
