"""The deadline loop's logic, with step functions of known duration (no process group needed)."""

import time

import pytest
import torch

from qtd.deadline import DeadlineTimer, SpeedModel, compute_fixed_batch, deadline_samples


def sleeping_step(seconds_per_sample: float):
    calls = []

    def step(k: int) -> float:
        calls.append(k)
        time.sleep(seconds_per_sample * k)
        return float(k)

    return step, calls


def test_stops_before_a_micro_batch_that_cannot_finish():
    step, calls = sleeping_step(0.002)  # a micro-batch of 5 takes 10 ms
    timer = DeadlineTimer(deadline_s=0.1, micro_batch_size=5)
    timer.run(step)  # learns the per-sample time
    result = timer.run(step)
    assert result.compute_s <= 0.1 + 0.010 + 0.015  # at most one micro-batch (+ sleep jitter) past T_d
    assert result.compute_s >= 0.1 - 0.010 - 0.015  # and it does not give up early
    assert 35 <= result.samples <= 55
    assert result.samples == sum(calls[-result.micro_batches:])


def test_a_slow_node_shrinks_its_last_micro_batch_to_what_fits_or_computes_nothing():
    step, calls = sleeping_step(0.01)  # a micro-batch of 5 takes 50 ms, longer than T_d
    timer = DeadlineTimer(deadline_s=0.03, micro_batch_size=5)
    first = timer.run(step)  # no estimate yet: one micro-batch, one overshoot
    assert first.samples == 5 and first.compute_s < 0.03 + 0.05 + 0.015
    second = timer.run(step)  # 10 ms per sample: only a 2-sample micro-batch fits in 30 ms
    assert second.samples <= 3 and calls[-1] == second.samples and second.compute_s < 0.03 + 0.015
    tiny = DeadlineTimer(deadline_s=0.005, micro_batch_size=5)
    tiny.run(step)
    nothing = tiny.run(step)  # not even one sample fits: the gradient is empty, nothing overshoots
    assert nothing.samples == 0 and nothing.micro_batches == 0 and nothing.loss_sum == 0.0
    assert nothing.compute_s < 0.005 + 0.005


def test_one_stalled_micro_batch_does_not_stop_a_node_for_good():
    """The first backward pass of a process took 150 ms against T_d = 20 ms in a first run: the estimate
    then said nothing fits, and since it only changes when a micro-batch runs, every later gradient of all 8
    nodes was empty (4% accuracy). Now the node computes again within a few iterations."""
    durations = iter([0.15])  # the first micro-batch stalls, then 0.2 ms per sample

    def step(k: int) -> float:
        time.sleep(next(durations, 0.0002 * k))
        return float(k)

    timer = DeadlineTimer(deadline_s=0.02, micro_batch_size=5)
    samples = [timer.run(step).samples for _ in range(12)]
    assert samples[0] == 5 and samples[1] == 0  # the stall, then the estimate's prediction: nothing fits
    assert samples[-1] >= 20, samples  # recovered: a healthy node fills its deadline again
    assert sum(1 for s in samples if s == 0) <= 4, samples


def test_a_node_too_slow_for_any_sample_probes_ever_more_rarely_one_sample_at_a_time():
    step, calls = sleeping_step(0.01)  # 10 ms per sample, T_d = 5 ms: no sample ever fits
    timer = DeadlineTimer(deadline_s=0.005, micro_batch_size=5)
    results = [timer.run(step) for _ in range(24)]
    probes = [i for i, r in enumerate(results) if i and r.samples]
    assert probes == [2, 5, 10, 19], [r.samples for r in results]  # after 1, 2, 4, 8 empty iterations
    assert all(results[i].samples == 1 and results[i].compute_s < 0.005 + 0.01 + 0.015 for i in probes)


@pytest.mark.parametrize("speed, deadline, micro", [(200.0, 0.1, 4), (37.0, 0.3, 5), (90.0, 0.05, 1)])
def test_paced_node_computes_floor_of_speed_times_deadline(speed, deadline, micro):
    step, calls = sleeping_step(0.0)
    timer = DeadlineTimer(deadline_s=deadline, micro_batch_size=micro)
    for _ in range(3):
        result = timer.run(step, speed=speed)
        assert result.samples == deadline_samples(speed, deadline) == int(speed * deadline + 1e-9)
        assert result.compute_s >= result.samples / speed - 0.002  # paced: no faster than V


def test_fixed_batch_is_paced_to_the_emulated_speed():
    step, _ = sleeping_step(0.0)
    result = compute_fixed_batch(step, 10, speed=100.0)
    assert result.samples == 10 and result.compute_s >= 0.1 - 0.002


def test_speed_model_is_deterministic_per_node_and_iteration():
    model = SpeedModel("uniform", 10, 90, seed=3)
    assert model.speed(2, 7) == SpeedModel("uniform", 10, 90, seed=3).speed(2, 7)
    draws = [model.speed(i, t) for i in range(20) for t in range(20)]
    assert all(10 <= v <= 90 for v in draws) and len(set(draws)) == len(draws)
    assert abs(sum(draws) / len(draws) - 50) < 5
    assert SpeedModel("fixed", 1, 1, speeds=(5.0, 7.0)).speed(1, 99) == 7.0


@pytest.mark.cuda
def test_on_a_gpu_a_micro_batch_counts_once_its_kernels_finished():
    """The step only enqueues GPU work and returns at once; the timer must still count and time what the GPU
    finished, and leave nothing pending (benchmarks/gpu_check.py adds a control without the sync)."""
    device = torch.device("cuda")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(10_000_000)  # warm-up: clocks ramp up
    start.record()
    torch.cuda._sleep(20_000_000)
    end.record()
    end.synchronize()
    cycles_per_s = 20_000_000 / (start.elapsed_time(end) / 1e3)

    def step(k: int) -> float:
        torch.cuda._sleep(int(k * 0.002 * cycles_per_s))  # 2 ms of GPU time per sample
        return float(k)

    timer = DeadlineTimer(deadline_s=0.1, micro_batch_size=5, device=device)
    timer.run(step)
    result = timer.run(step)
    t0 = time.perf_counter()
    torch.cuda.synchronize()
    assert time.perf_counter() - t0 < 0.002  # every counted micro-batch had finished
    assert 25 <= result.samples <= 55 + 5  # what the GPU finishes in 0.1 s (+-30% clock drift), not what launches
    assert result.busy_s >= 0.9 * result.samples * 0.002 * 0.7
    assert result.compute_s <= 0.1 + 0.010 * 1.3 + 0.005
