"""The GPU path on one real GPU (issue 18): Triton kernels, the CUDA deadline path, the CUDA-marked tests.

    bash benchmarks/gpu_check.sh                      # on a GPU machine: install as the README says, then this
    python benchmarks/gpu_check.py                    # the same without the install (qtd already installed)
    python benchmarks/gpu_check.py --dry-run          # on a CPU machine: every step that can run, tiny sizes
    python benchmarks/gpu_check.py --steps sim,cuda_tests --out DIR   # rerun some steps only

Steps, each in a subprocess with its own timeout (a failing or hung step is recorded as failed, the others
still run; steps that no longer fit into ``--budget-s`` are skipped):

- environment: torch, CUDA, Triton and the device;
- triton_bit_exact: the quantize+pack, unpack+dequantize and quantize kernels give exactly the bytes and values
  of the plain-torch CPU reference, s = 1..8, odd lengths and sizes around the kernels' 2048-element blocks;
- triton_throughput: their GB/s on 100M elements next to torch's device-to-device copy in the same run;
- deadline_observed: DeadlineTimer on CUDA counts a micro-batch only once the GPU has finished it;
- deadline_run: a real QuanTimed run, world size 1, started by torchrun with nccl on the GPU; its
  deadline_overshoot_p99_s must stay within about one micro-batch (micro_batch_p99_s);
- sim: the virtual-time simulator of an 8-node config, on CUDA;
- cuda_tests: ``pytest -m cuda``.

It writes gpu_check.json (``summary``: all_passed, device, the throughput figures, the copy bandwidth, the
overshoot; ``settings``; one entry per step) after every step, and gpu_check.png at the end, into ``--out``
(default benchmarks/results/), and copies them to $OUT when that is set. Only a real GPU run writes
benchmarks/results/: ``--dry-run`` writes to ``--out DIR`` or a new temporary directory. It exits 0 only if all
passed. ``--dry-run`` runs the Triton kernels in Triton's interpreter, the run with gloo and the simulator on
the CPU, collects the CUDA tests without running them, and lists what it skipped and why.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
NAME = "gpu_check"
COMMITTED = BENCH / "results"
STEPS = ("environment", "triton_bit_exact", "triton_throughput", "deadline_observed", "deadline_run", "sim",
         "cuda_tests")
TIMEOUT_S = {"environment": 90, "triton_bit_exact": 180, "triton_throughput": 150, "deadline_observed": 60,
             "deadline_run": 150, "sim": 120, "cuda_tests": 240}
MIN_STEP_S = 15  # a step is not started with less budget than this left
TARGET_FRACTION = 0.5  # issue 18: quantize+pack at 4 bits on 100M elements at >= 50% of the copy bandwidth
NOT_SHOWN_ON_ONE_GPU = (
    "NCCL refuses two ranks on one GPU, so one GPU runs world size 1 only: no neighbour exchange, collective or "
    "heartbeat crosses between processes there, and qtd skips collectives at world size 1, so the run makes no "
    "nccl call beyond creating and destroying its process group. Multi-rank runs, the exchange, collectives and "
    "failure handling stay tested on CPU with gloo (tests/test_engine.py, tests/test_comm.py, "
    "tests/test_fault_tolerance.py); nccl with several ranks needs a machine with several GPUs.")


@dataclass
class Settings:
    """What the steps run with; ``dry`` shrinks every size and swaps CUDA for the CPU where it can."""

    dry: bool
    quick: bool
    elements: int
    repeats: int
    batch: int
    run_iterations: int
    run_deadline_s: float
    overshoot_slack_s: float
    sim_iterations: int
    sim_nodes: int = 8

    @classmethod
    def make(cls, dry: bool, quick: bool, elements: int | None) -> "Settings":
        if dry:
            return cls(dry, quick, elements or 2**12 + 5, repeats=2, batch=1, run_iterations=30,
                       run_deadline_s=0.01, overshoot_slack_s=0.025, sim_iterations=10)
        return cls(dry, quick, elements or (10_000_000 if quick else 100_000_000), repeats=3 if quick else 7,
                   batch=10, run_iterations=100 if quick else 300, run_deadline_s=0.01, overshoot_slack_s=0.005,
                   sim_iterations=30 if quick else 100)


@dataclass
class StepResult:
    name: str
    status: str  # passed, failed, skipped
    message: str
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


def stamp(started: float) -> str:
    return f"[gpu_check {time.strftime('%H:%M:%S')} +{time.monotonic() - started:.0f}s]"


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_command(command: list[str], timeout_s: float, env: dict[str, str] | None = None,
                tail_lines: int = 60) -> tuple[int | None, str]:
    """Run ``command`` in its own process group, echoing its output indented; (exit code or None when it was
    killed at ``timeout_s``, the last ``tail_lines`` lines of its output)."""
    proc = subprocess.Popen(command, cwd=REPO, env=env or child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
    tail: deque[str] = deque(maxlen=tail_lines)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            print("    | " + line.rstrip("\n")[:300], flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code: int | None = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        code = None
        for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):  # the whole group: torchrun's workers too
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
    reader.join(timeout=5)
    return code, "\n".join(tail)


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def helper_step(script: str, arguments: list[str], timeout_s: float, work: Path, name: str) -> StepResult:
    """A step run by one of the benchmarks/_gpu_check_*.py helpers, which write {status, message, details}."""
    result_file = work / f"{name}.json"
    result_file.unlink(missing_ok=True)
    code, output = run_command([sys.executable, str(BENCH / script), *arguments, "--result", str(result_file)],
                               timeout_s)
    if code is None:
        return StepResult(name, "failed", f"timed out after {timeout_s:.0f} s; last output: {last_line(output)}",
                          details={"output_tail": output})
    if not result_file.is_file():
        return StepResult(name, "failed", f"exited with code {code} without a result: {last_line(output)}",
                          details={"output_tail": output})
    data = json.loads(result_file.read_text())
    details = data["details"]
    if data["status"] == "failed":
        details["output_tail"] = output
    return StepResult(name, data["status"], data["message"], details=details)


# ------------------------------------------------------------------------------------------------- the steps

ENVIRONMENT_PROBE = r"""
import json, os, platform, subprocess, sys
import torch
info = {"python": platform.python_version(), "executable": sys.executable, "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(), "load_average_1min": os.getloadavg()[0]}
for name in ("triton", "numba", "numpy"):
    try:
        info[name] = __import__(name).__version__
    except Exception as exc:
        info[name] = f"not importable: {type(exc).__name__}: {exc}"[:200]
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(device=torch.cuda.get_device_name(0), device_count=torch.cuda.device_count(),
                capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                memory_gib=round(p.total_memory / 2**30, 1), multiprocessors=p.multi_processor_count)
    try:
        version = torch.cuda.nccl.version()
        info["nccl"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    except Exception as exc:
        info["nccl"] = f"unavailable: {type(exc).__name__}: {exc}"[:200]
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        info["nvidia_smi"] = f"unavailable: {exc}"
print("ENV " + json.dumps(info))
"""


def step_environment(s: Settings, timeout_s: float, work: Path) -> StepResult:
    code, output = run_command([sys.executable, "-c", ENVIRONMENT_PROBE], timeout_s)
    line = next((x for x in output.splitlines() if x.startswith("ENV ")), None)
    if code != 0 or line is None:
        why = "timed out" if code is None else f"exited with code {code}"
        return StepResult("environment", "failed", f"the probe {why}: {last_line(output)}",
                          details={"output_tail": output})
    info = json.loads(line[4:])
    summary = (f"torch {info['torch']} (CUDA {info['torch_cuda']}), triton {info['triton']}, "
               f"numba {info['numba']}, python {info['python']}")
    if info["cuda_available"]:
        summary = f"{info['device']} (sm_{info['capability'].replace('.', '')}, {info['memory_gib']} GiB); " + summary
    elif not s.dry:
        return StepResult("environment", "failed", "torch sees no CUDA device: " + summary, details=info)
    if "not importable" in str(info["triton"]) and not s.dry:  # a dry run skips the kernel steps then
        return StepResult("environment", "failed", f"triton is {info['triton']}", details=info)
    return StepResult("environment", "passed", summary, details=info)


def step_triton_bit_exact(s: Settings, timeout_s: float, work: Path) -> StepResult:
    return helper_step("_gpu_check_kernels.py", ["exact", *(["--interpret"] if s.dry else [])], timeout_s, work,
                       "triton_bit_exact")


def step_triton_throughput(s: Settings, timeout_s: float, work: Path) -> StepResult:
    arguments = ["throughput", "--elements", str(s.elements), "--repeats", str(s.repeats), "--batch", str(s.batch)]
    return helper_step("_gpu_check_kernels.py", arguments + (["--interpret"] if s.dry else []), timeout_s, work,
                       "triton_throughput")


def step_deadline_observed(s: Settings, timeout_s: float, work: Path) -> StepResult:
    if s.dry:
        return StepResult("deadline_observed", "skipped", "needs CUDA: on a CPU a micro-batch's work is done when "
                          "its step returns, so there is no pending work to observe")
    return helper_step("_gpu_check_timer.py", [], timeout_s, work, "deadline_observed")


FALLBACK_WARNING = "path failed"  # qtd.compress.backend's warning when an automatic fast path raised


def step_deadline_run(s: Settings, timeout_s: float, work: Path) -> StepResult:
    backend = "gloo" if s.dry else "nccl"
    out_dir = work / "deadline_run"
    shutil.rmtree(out_dir, ignore_errors=True)
    overrides = ["topology.nodes=1", f"run.iterations={s.run_iterations}", f"run.eval_every={s.run_iterations}",
                 f"algorithm.deadline_s={s.run_deadline_s}", f"run.out_dir={out_dir}", f"comm.backend={backend}",
                 "run.progress=false", "run.checkpoint_every=0", "run.resume=never", "comm.timeout_s=60"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               "-m", "qtd.train", "--config", str(REPO / "configs" / "quickstart.yaml")]
    for item in overrides:
        command += ["--set", item]
    code, output = run_command(command, timeout_s)
    details: dict[str, Any] = {"command": " ".join(command[1:]), "backend": backend}
    if code is None:
        return StepResult("deadline_run", "failed", f"timed out after {timeout_s:.0f} s: {last_line(output)}",
                          details={**details, "output_tail": output})
    summary_file = out_dir / "summary.json"
    if code != 0 or not summary_file.is_file():
        return StepResult("deadline_run", "failed", f"torchrun exited with code {code}: {last_line(output)}",
                          details={**details, "output_tail": output})
    summary = json.loads(summary_file.read_text())
    overshoot, micro = summary["deadline_overshoot_p99_s"], summary["micro_batch_p99_s"]
    bound = micro + s.overshoot_slack_s
    details.update({k: summary.get(k) for k in ("backend", "device", "nodes", "iterations", "deadline_s",
                                                "deadline_overshoot_p99_s", "micro_batch_p99_s",
                                                "samples_per_iteration", "eval_accuracy", "time_s")})
    details.update(overshoot_bound_s=bound, overshoot_slack_s=s.overshoot_slack_s)
    problems = []
    if summary["backend"] != backend:
        problems.append(f"the run used {summary['backend']}, not {backend}")
    if not s.dry and not str(summary["device"]).startswith("cuda"):
        problems.append(f"the run used {summary['device']}, not a CUDA device")
    if summary["iterations"] != s.run_iterations or not summary["samples_per_iteration"][0] > 0:
        problems.append(f"{summary['iterations']} iterations, {summary['samples_per_iteration']} samples each")
    if not overshoot <= bound:
        problems.append(f"deadline overshoot p99 {overshoot * 1e3:.2f} ms > micro-batch p99 {micro * 1e3:.2f} ms "
                        f"+ {s.overshoot_slack_s * 1e3:.0f} ms")
    if FALLBACK_WARNING in output:
        problems.append("a fast compression path failed and fell back to the reference: " +
                        next(line for line in output.splitlines() if FALLBACK_WARNING in line)[:300])
    if problems:
        return StepResult("deadline_run", "failed", "; ".join(problems), details={**details, "output_tail": output})
    return StepResult("deadline_run", "passed", (
        f"{backend} on {summary['device']}: overshoot p99 {overshoot * 1e3:.2f} ms <= micro-batch p99 "
        f"{micro * 1e3:.2f} ms + {s.overshoot_slack_s * 1e3:.0f} ms; {summary['samples_per_iteration'][0]:.1f} "
        f"samples per {s.run_deadline_s * 1e3:.0f} ms deadline"), details=details)


def step_sim(s: Settings, timeout_s: float, work: Path) -> StepResult:
    out_dir = work / "sim"
    shutil.rmtree(out_dir, ignore_errors=True)
    overrides = [f"topology.nodes={s.sim_nodes}", f"run.iterations={s.sim_iterations}",
                 f"run.eval_every={max(1, s.sim_iterations // 2)}", f"run.out_dir={out_dir}", "run.progress=false",
                 "algorithm.deadline_s=0.25"]  # the paper's T_d: 2 to 22 samples at V ~ U(10, 90)
    command = [sys.executable, "-m", "qtd.cli.main", "sim", str(REPO / "configs" / "quickstart.yaml")]
    for item in overrides:
        command += ["--set", item]
    code, output = run_command(command, timeout_s)
    details: dict[str, Any] = {"command": " ".join(command[1:])}
    if code is None:
        return StepResult("sim", "failed", f"timed out after {timeout_s:.0f} s: {last_line(output)}",
                          details={**details, "output_tail": output})
    summary_file = out_dir / "summary.json"
    if code != 0 or not summary_file.is_file():
        return StepResult("sim", "failed", f"qtd sim exited with code {code}: {last_line(output)}",
                          details={**details, "output_tail": output})
    summary = json.loads(summary_file.read_text())
    details.update({k: summary.get(k) for k in ("device", "nodes", "iterations", "eval_loss", "eval_accuracy",
                                                "wall_s", "diverged", "samples_per_iteration")})
    want = "cpu" if s.dry else "cuda"
    problems = []
    if not str(summary["device"]).startswith(want):
        problems.append(f"the simulator ran on {summary['device']}, not {want}")
    if summary["nodes"] != s.sim_nodes or summary["iterations"] != s.sim_iterations or summary["diverged"]:
        problems.append(f"{summary['nodes']} nodes, {summary['iterations']} iterations, diverged "
                        f"{summary['diverged']}")
    if summary["eval_loss"] is None or not sum(summary["samples_per_iteration"]) > 0:
        problems.append(f"eval loss {summary['eval_loss']}, samples {summary['samples_per_iteration']}")
    if FALLBACK_WARNING in output:
        problems.append("a fast compression path failed and fell back to the reference")
    if problems:
        return StepResult("sim", "failed", "; ".join(problems), details={**details, "output_tail": output})
    return StepResult("sim", "passed", (f"{s.sim_nodes} nodes, {s.sim_iterations} iterations on "
                                        f"{summary['device']} in {summary['wall_s']:.1f} s, eval accuracy "
                                        f"{summary['eval_accuracy']:.3f}"), details=details)


def step_cuda_tests(s: Settings, timeout_s: float, work: Path) -> StepResult:
    base = [sys.executable, "-m", "pytest", "-m", "cuda", "-p", "no:cacheprovider"]
    if s.dry:  # collecting every test module costs a while on a busy CPU: only the ones that use the marker
        files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                       if "mark.cuda" in p.read_text())
        code, output = run_command(base + ["--collect-only", *files], timeout_s, tail_lines=400)  # addopts: -q
        collected = [line.strip() for line in output.splitlines() if "::" in line and " " not in line.strip()]
        if code != 0 or not collected:
            return StepResult("cuda_tests", "failed", f"collecting the cuda-marked tests failed (code {code}, "
                              f"{len(collected)} collected): {last_line(output)}", details={"output_tail": output})
        return StepResult("cuda_tests", "skipped", f"no CUDA device: collected the {len(collected)} tests marked "
                          f"cuda in {len(files)} files, ran none", details={"collected": collected, "files": files})
    xml = work / "cuda_tests.xml"
    xml.unlink(missing_ok=True)
    code, output = run_command(base + ["-q", f"--junitxml={xml}", "--timeout=180"], timeout_s)
    if code is None:
        return StepResult("cuda_tests", "failed", f"timed out after {timeout_s:.0f} s: {last_line(output)}",
                          details={"output_tail": output})
    if not xml.is_file():
        return StepResult("cuda_tests", "failed", f"pytest exited with code {code}: {last_line(output)}",
                          details={"output_tail": output})
    cases = []
    for case in ElementTree.parse(xml).getroot().iter("testcase"):
        outcome, text = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome, text = child.tag, (child.get("message") or "")[:300]
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time") or 0), "message": text})
    bad = [c for c in cases if c["outcome"] != "passed"]
    details = {"tests": cases, "exit_code": code}
    if code != 0 or bad or not cases:
        first = f"{bad[0]['test']} {bad[0]['outcome']}: {bad[0]['message']}" if bad else last_line(output)
        return StepResult("cuda_tests", "failed", f"{len(bad)} of {len(cases)} not passed (a cuda test must not "
                          f"skip on a GPU machine); {first}", details={**details, "output_tail": output})
    return StepResult("cuda_tests", "passed", f"{len(cases)} passed", details=details)


STEP_FUNCTIONS: dict[str, Callable[[Settings, float, Path], StepResult]] = {
    "environment": step_environment, "triton_bit_exact": step_triton_bit_exact,
    "triton_throughput": step_triton_throughput, "deadline_observed": step_deadline_observed,
    "deadline_run": step_deadline_run, "sim": step_sim, "cuda_tests": step_cuda_tests,
}


# ---------------------------------------------------------------------------------------------- the results

def build_summary(s: Settings, steps: list[StepResult], planned: list[str], complete: bool) -> dict[str, Any]:
    by_name = {r.name: r for r in steps}
    failed = [r.name for r in steps if r.status == "failed"]
    skipped = [r.name for r in steps if r.status == "skipped"]
    # A dry run cannot run the CUDA-only steps; a real GPU run that skipped a step has not shown it, and a
    # run of some steps (--steps) has not shown the others.
    all_passed = complete and not failed and set(planned) == set(STEPS) and (s.dry or not skipped)
    env = by_name.get("environment")
    device = "unknown (the environment step did not run)"
    if env is not None and env.details:
        device = env.details.get("device") or ("cpu" if s.dry else "no CUDA device")
    summary: dict[str, Any] = {"all_passed": all_passed, "dry_run": s.dry, "device": device, "complete": complete,
                               "steps_passed": [r.name for r in steps if r.status == "passed"],
                               "steps_failed": failed, "steps_skipped": skipped,
                               "steps_not_run": [n for n in planned if n not in by_name],
                               "steps_not_selected": [n for n in STEPS if n not in planned]}
    speed = by_name.get("triton_throughput")
    if speed is not None and speed.status == "passed":
        d = speed.details
        summary.update({
            "copy_gbps": d["copy_gbps"], "quant_pack_gbps": d["quant_pack_gbps"],
            "unpack_dequant_gbps": d["unpack_dequant_gbps"], "quant_pack_call_gbps": d["quant_pack_call_gbps"],
            "quant_pack_fraction_of_copy": d["quant_pack_fraction_of_copy"],
            "unpack_dequant_fraction_of_copy": d["unpack_dequant_fraction_of_copy"],
            "throughput_elements": d["elements"],
            "quant_pack_4bit_fraction_of_copy": d["quant_pack_fraction_of_copy"]["4"],
            "target_fraction_of_copy": TARGET_FRACTION,
            "target_met": (d["quant_pack_fraction_of_copy"]["4"] >= TARGET_FRACTION) if d["compiled"] else None,
        })
    run = by_name.get("deadline_run")
    if run is not None and "deadline_overshoot_p99_s" in run.details:
        summary.update({"deadline_overshoot_p99_s": run.details["deadline_overshoot_p99_s"],
                        "micro_batch_p99_s": run.details["micro_batch_p99_s"],
                        "overshoot_bound_s": run.details["overshoot_bound_s"],
                        "deadline_run_backend": run.details["backend"]})
    return summary


def build_settings(s: Settings, args: argparse.Namespace, budget_s: float) -> dict[str, Any]:
    return {
        **asdict(s), "budget_s": budget_s, "step_timeouts_s": args.timeouts,
        "throughput_bits": [1, 2, 4, 8], "bit_exact_bits": list(range(1, 9)),
        "units": ("GB/s = 1e9 bytes per second. quant_pack_gbps and unpack_dequant_gbps count fp32 elements x 4 "
                  "bytes (as benchmarks/compress_throughput.py does); copy_gbps counts the bytes a torch "
                  "device-to-device copy reads plus writes; *_fraction_of_copy divides a kernel's own memory "
                  "traffic (4 bytes read or written per element plus the packed bytes) by copy_gbps, i.e. the "
                  "share of the copy's bandwidth the kernel reaches. quant_pack_call_gbps times the whole "
                  "quantize_pack call (min/max pass and its host round trip included)."),
        "statistic": "median of the repeats after a warm-up; each repeat on CUDA is `batch` back-to-back calls "
                     "between two CUDA events",
        "deadline_run": "configs/quickstart.yaml at world size 1 (one torchrun process), nccl on the GPU "
                        "(gloo in a dry run), overshoot bound = micro_batch_p99_s + overshoot_slack_s",
        "sim": "configs/quickstart.yaml, 8 nodes, deadline 0.25 s, on CUDA when available",
        "python": platform.python_version(), "command": " ".join(["benchmarks/gpu_check.py", *sys.argv[1:]]),
        "repo_commit": git_commit(),
    }


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def write_results(path: Path, result: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    copy_out(path)


def copy_out(path: Path) -> None:
    """$OUT (the device machine's folder that comes back) receives every result file as soon as it changes."""
    out = os.environ.get("OUT")
    if out and Path(out).is_dir() and Path(out).resolve() != path.parent.resolve():
        shutil.copy2(path, Path(out) / path.name)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    bits = sorted(summary["quant_pack_fraction_of_copy"], key=int)
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.38
    for i, (key, label) in enumerate((("quant_pack_fraction_of_copy", "quantize+pack"),
                                      ("unpack_dequant_fraction_of_copy", "unpack+dequantize"))):
        ax.bar([j + (i - 0.5) * width for j in range(len(bits))], [summary[key][b] for b in bits], width,
               label=label)
    ax.axhline(1.0, color="k", linestyle="--", linewidth=1, label=f"torch copy: {summary['copy_gbps']:,.0f} GB/s")
    ax.axhline(TARGET_FRACTION, color="grey", linestyle=":", linewidth=1, label="issue 18 target (s = 4)")
    ax.set_xticks(range(len(bits)), [f"s = {b}" for b in bits])
    ax.set_ylabel("memory traffic / copy bandwidth")
    where = "dry run: Triton interpreter on CPU, not a GPU figure" if summary["dry_run"] else summary["device"]
    ax.set_title(f"qtd Triton kernels, {summary['throughput_elements']:,} fp32 elements ({where})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def rate(value: float) -> str:
    """A GB/s figure: thousands separated on a GPU, three significant digits for the interpreter's tiny ones."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}" if value >= 1 else f"{value:.2g}"


def share(value: float) -> str:
    return f"{value:.1%}" if value >= 0.001 else f"{value * 100:.2g}%"


def print_table(result: dict[str, Any]) -> None:
    summary = result["summary"]
    verdict = "ALL PASSED" if summary["all_passed"] else "NOT ALL PASSED"
    kind = "dry run" if summary["dry_run"] else "GPU run"
    print(f"\ngpu_check ({kind}, {summary['device']}): {verdict}")
    print(f"{'step':20s} {'status':8s} {'seconds':>8s}  note")
    for step in result["steps"]:
        print(f"{step['name']:20s} {step['status']:8s} {step['seconds']:8.1f}  {step['message'][:150]}")
    for name in summary["steps_not_run"]:
        print(f"{name:20s} {'not run':8s} {'':8s}  (the check stopped before it)")
    if "copy_gbps" in summary:
        note = " (interpreter on CPU: not a GPU figure)" if summary["dry_run"] else ""
        print(f"\n{summary['throughput_elements']:,} fp32 elements{note}; copy {rate(summary['copy_gbps'])} GB/s "
              "(read + write); GB/s of fp32 data, 'of copy' = the kernel's memory traffic / copy bandwidth")
        print(f"{'bits':>4s} {'quantize+pack':>15s} {'(whole call)':>13s} {'of copy':>8s} "
              f"{'unpack+dequantize':>18s} {'of copy':>8s}")
        for b in sorted(summary["quant_pack_gbps"], key=int):
            quant, unpack = summary["quant_pack_fraction_of_copy"][b], summary["unpack_dequant_fraction_of_copy"][b]
            print(f"{b:>4s} {rate(summary['quant_pack_gbps'][b]):>10s} GB/s "
                  f"{rate(summary['quant_pack_call_gbps'][b]):>8s} GB/s {share(quant):>8s} "
                  f"{rate(summary['unpack_dequant_gbps'][b]):>13s} GB/s {share(unpack):>8s}")
        met = {True: "met", False: "NOT met", None: "not measured (no GPU)"}[summary["target_met"]]
        print(f"target: quantize+pack at 4 bits >= {TARGET_FRACTION:.0%} of copy bandwidth: {met} "
              f"(measured {share(summary['quant_pack_4bit_fraction_of_copy'])})")
    if "deadline_overshoot_p99_s" in summary:
        print(f"deadline run ({summary['deadline_run_backend']}): overshoot p99 "
              f"{summary['deadline_overshoot_p99_s'] * 1e3:.2f} ms, micro-batch p99 "
              f"{summary['micro_batch_p99_s'] * 1e3:.2f} ms, bound {summary['overshoot_bound_s'] * 1e3:.2f} ms")
    print(f"not shown on one GPU: {result['not_shown_on_one_gpu']}")


# ----------------------------------------------------------------------------------------------------- main

class OneLineParser(argparse.ArgumentParser):
    """Bad arguments end with one line that says what to change, not a usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"gpu_check: error: {message}", file=sys.stderr)
        sys.exit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="on a CPU machine: every step that can run, tiny")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (10M elements)")
    parser.add_argument("--out", default=None, help="directory for gpu_check.json and .png (default "
                        "benchmarks/results/; a dry run: a new temporary directory)")
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated steps to run (default: all)")
    parser.add_argument("--budget-s", type=float, default=400.0, help="seconds for all steps together")
    parser.add_argument("--timeout", action="append", default=[], metavar="STEP=SECONDS",
                        help="override one step's timeout (repeatable)")
    parser.add_argument("--elements", type=int, default=None, help="throughput: elements per pass")
    parser.add_argument("--install-note", default="", help="how gpu_check.sh installed qtd (recorded)")
    args = parser.parse_args(argv)
    steps = [name.strip() for name in args.steps.split(",") if name.strip()]
    unknown = [name for name in steps if name not in STEPS]
    if unknown or not steps:
        parser.error(f"--steps {args.steps!r}: unknown step {', '.join(unknown) or '(none given)'}; "
                     f"choose from {', '.join(STEPS)}")
    args.steps = [name for name in STEPS if name in steps]
    timeouts = dict(TIMEOUT_S)
    for item in args.timeout:
        name, _, value = item.partition("=")
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if name not in STEPS or not seconds > 0:
            parser.error(f"--timeout {item!r}: use STEP=SECONDS with a step from {', '.join(STEPS)} and "
                         "seconds > 0")
        timeouts[name] = seconds
    args.timeouts = timeouts
    if not args.budget_s > 0:
        parser.error(f"--budget-s {args.budget_s}: must be > 0")
    if args.elements is not None and args.elements < 1:
        parser.error(f"--elements {args.elements}: must be >= 1")
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="qtd-gpu-check-") if args.dry_run else str(COMMITTED)
    elif args.dry_run and Path(args.out).resolve() == COMMITTED.resolve():
        parser.error("--dry-run never writes benchmarks/results/ (that file comes from a real GPU run): pass "
                     "--out DIR, or no --out for a temporary directory")
    return args


def cuda_visible() -> bool:
    """Whether torch sees a CUDA device, asked in a subprocess (a broken driver may hang: bounded)."""
    try:
        return subprocess.run([sys.executable, "-c", "import torch, sys; sys.exit(0 if torch.cuda.is_available() "
                               "else 1)"], capture_output=True, timeout=120).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = parse_args(argv)
    if not args.dry_run and not cuda_visible():
        print("gpu_check: error: torch sees no CUDA device here; this check needs one GPU (on a CPU machine, "
              "run it with --dry-run)", file=sys.stderr)
        return 2
    s = Settings.make(args.dry_run, args.quick, args.elements)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="qtd-gpu-check-work-"))
    path = out / f"{NAME}.json"
    (out / f"{NAME}.png").unlink(missing_ok=True)  # a picture of an earlier run must not sit beside this one
    settings = build_settings(s, args, args.budget_s)
    print(f"{stamp(started)} {'dry run' if s.dry else 'GPU run'}: steps {', '.join(args.steps)}; results in "
          f"{path}; budget {args.budget_s:.0f} s", flush=True)
    steps: list[StepResult] = []
    result: dict[str, Any] = {}

    def record(complete: bool) -> None:
        result.clear()
        result.update(summary=build_summary(s, steps, args.steps, complete), settings=settings,
                      install=args.install_note or None, not_shown_on_one_gpu=NOT_SHOWN_ON_ONE_GPU,
                      steps=[asdict(r) for r in steps])
        write_results(path, result)

    record(complete=False)
    deadline = started + args.budget_s
    for name in args.steps:
        left = deadline - time.monotonic()
        if left < MIN_STEP_S:
            step = StepResult(name, "skipped", f"out of time budget ({left:.0f} s of --budget-s "
                              f"{args.budget_s:.0f} left)")
        else:
            timeout_s = min(args.timeouts[name], left)
            print(f"{stamp(started)} {name}: started (timeout {timeout_s:.0f} s)", flush=True)
            t0 = time.monotonic()
            try:
                step = STEP_FUNCTIONS[name](s, timeout_s, work)
            except Exception as exc:  # noqa: BLE001 - a bug in one step must not stop the others
                step = StepResult(name, "failed", f"the step itself raised {type(exc).__name__}: {exc}")
            step.seconds = round(time.monotonic() - t0, 2)
        steps.append(step)
        print(f"{stamp(started)} {name}: {step.status.upper()} in {step.seconds:.1f} s: {step.message}", flush=True)
        record(complete=False)
    record(complete=True)
    if "copy_gbps" in result["summary"]:
        try:
            plot(result, out / f"{NAME}.png")
            copy_out(out / f"{NAME}.png")
        except Exception as exc:  # noqa: BLE001 - the figures are in the JSON; say why the picture is missing
            result["plot_error"] = f"{type(exc).__name__}: {exc}"
            write_results(path, result)
    print_table(result)
    print(f"{stamp(started)} wrote {path}" + (f" and {out / (NAME + '.png')}" if "copy_gbps" in result["summary"]
                                               and "plot_error" not in result else ""), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return 0 if result["summary"]["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
