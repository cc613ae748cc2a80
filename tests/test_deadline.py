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
