"""One step of benchmarks/gpu_check.py: on a GPU, a micro-batch counts only once its completion is observed.

    python benchmarks/_gpu_check_timer.py --result FILE

GPU kernels run asynchronously: a step function can return before its work is done. ``DeadlineTimer`` with a
CUDA device synchronizes after every micro-batch (qtd/deadline/loop.py), so the samples it counts and the time it
measures are work the GPU has finished. This calls the timer directly with a step that only enqueues GPU work
(``torch.cuda._sleep``: a kernel that spins for a number of clock cycles) and returns at once, and checks:

- right after ``run()`` returns nothing is pending on the GPU (a synchronize returns at once);
- the busy time covers the GPU time of the micro-batches counted;
- the count is what fits into the deadline at the GPU's pace, not what Python can launch, and the compute phase
  overshoots the deadline by at most about one micro-batch.

A control runs the same kind of step through a timer that does not synchronize (``device=cpu``): it must count
more samples than the GPU finished and leave work pending, or these checks could not tell the difference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from _common import write_step_result  # noqa: E402
from qtd.deadline import DeadlineTimer  # noqa: E402

DEADLINE_S = 0.1
MICRO_BATCH = 5
PER_SAMPLE_S = 0.002  # GPU time per sample: a micro-batch is 10 ms of GPU work
CONTROL_DEADLINE_S = 0.005
CONTROL_PER_SAMPLE_S = 0.0002  # short kernels, so that the control's unobserved backlog stays well under 1 s
JITTER_S = 0.005  # host scheduling allowance on top of one micro-batch
PENDING_S = 0.002  # a synchronize on an idle GPU takes microseconds


def gpu_seconds(fn, device: torch.device) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def cycles_per_second(device: torch.device) -> float:
    """torch.cuda._sleep's clock: the median of three 20M-cycle spins after a warm-up (clocks ramp up)."""
    gpu_seconds(lambda: torch.cuda._sleep(20_000_000), device)
    return statistics.median(20_000_000 / gpu_seconds(lambda: torch.cuda._sleep(20_000_000), device)
                             for _ in range(3))


def pending_after(fn) -> tuple[object, float]:
    """fn()'s result and how long a synchronize right after it takes (the GPU work still queued)."""
    result = fn()
    t0 = time.perf_counter()
    torch.cuda.synchronize()
    return result, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--result", required=True, help="where to write this step's result (JSON)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        write_step_result(args.result, "failed", "no CUDA device: there is no asynchronous work to observe", {})
        return 1
    device = torch.device("cuda", torch.cuda.current_device())
    cps = cycles_per_second(device)

    def enqueue(per_sample_s: float):
        def step(k: int) -> float:
            torch.cuda._sleep(int(k * per_sample_s * cps))  # returns at once; the GPU spins for k samples' time
            return float(k)
        return step

    step = enqueue(PER_SAMPLE_S)
    micro_s = statistics.median(gpu_seconds(lambda: step(MICRO_BATCH), device) for _ in range(3))
    per_sample = micro_s / MICRO_BATCH
    fits = DEADLINE_S / per_sample  # samples the GPU finishes within the deadline
    timer = DeadlineTimer(DEADLINE_S, MICRO_BATCH, device)
    timer.run(step)  # learns the per-sample time
    runs, problems = [], []
    for i in range(3):
        result, pending = pending_after(lambda: timer.run(step))
        runs.append({"samples": result.samples, "micro_batches": result.micro_batches,
                     "compute_s": round(result.compute_s, 5), "busy_s": round(result.busy_s, 5),
                     "pending_after_s": round(pending, 6)})
        if pending > PENDING_S:
            problems.append(f"run {i}: {pending * 1e3:.1f} ms of GPU work still pending after run() returned")
        if result.busy_s < 0.9 * result.samples * per_sample:
            problems.append(f"run {i}: busy {result.busy_s * 1e3:.1f} ms < the GPU time of its "
                            f"{result.samples} samples ({result.samples * per_sample * 1e3:.1f} ms)")
        if not 0.5 * fits <= result.samples <= fits + MICRO_BATCH:
            problems.append(f"run {i}: counted {result.samples} samples; {fits:.0f} fit into the deadline")
        if result.compute_s > DEADLINE_S + micro_s + JITTER_S:
            problems.append(f"run {i}: compute phase {result.compute_s * 1e3:.1f} ms > deadline "
                            f"{DEADLINE_S * 1e3:.0f} ms + one micro-batch {micro_s * 1e3:.1f} ms + "
                            f"{JITTER_S * 1e3:.0f} ms")

    control_step = enqueue(CONTROL_PER_SAMPLE_S)
    control_fits = CONTROL_DEADLINE_S / (CONTROL_PER_SAMPLE_S * per_sample / PER_SAMPLE_S)
    unobserved = DeadlineTimer(CONTROL_DEADLINE_S, MICRO_BATCH, torch.device("cpu"))  # no synchronize
    control, control_pending = pending_after(lambda: unobserved.run(control_step))
    control_row = {"samples": control.samples, "samples_the_gpu_finishes_in_the_deadline": round(control_fits, 1),
                   "compute_s": round(control.compute_s, 5), "pending_after_s": round(control_pending, 4)}
    if control.samples <= 2 * (control_fits + MICRO_BATCH) or control_pending <= 10 * PENDING_S:
        problems.append(f"the control (a timer that does not synchronize) counted {control.samples} samples "
                        f"(the GPU finishes {control_fits:.0f}) and left {control_pending * 1e3:.1f} ms "
                        "pending: these checks cannot tell observed from unobserved work")

    details = {"device": torch.cuda.get_device_name(device), "deadline_s": DEADLINE_S,
               "micro_batch_size": MICRO_BATCH, "micro_batch_gpu_s": round(micro_s, 6),
               "samples_that_fit": round(fits, 1), "sleep_cycles_per_s": round(cps), "runs": runs,
               "control_without_sync": control_row, "jitter_allowance_s": JITTER_S,
               "pending_allowance_s": PENDING_S}
    if problems:
        status, message = "failed", "; ".join(problems)
    else:
        worst = max(r["compute_s"] for r in runs) - DEADLINE_S
        status, message = "passed", (
            f"counted {runs[-1]['samples']} samples ({fits:.0f} fit), nothing pending after run(), overshoot "
            f"<= {worst * 1e3:.1f} ms (micro-batch {micro_s * 1e3:.1f} ms); without the sync the control counted "
            f"{control.samples} samples and left {control_pending * 1e3:.0f} ms of GPU work pending")
    write_step_result(args.result, status, message, details)
    print(f"deadline_observed: {status}: {message}", flush=True)
    return 0 if status == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
