"""Progress on the chosen rank: sparse lines in a log file, a bar on a terminal, time budgets as progress."""

import io

from qtd.metrics import Progress, result_line
from qtd.metrics.progress import LINE_STEPS


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_file_gets_one_line_per_tenth_not_one_per_update():
    log = io.StringIO()
    progress = Progress(10_000, desc="quantimed x8", stream=log)
    for _ in range(10_000):
        progress.update(1, loss="0.123")
    progress.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == LINE_STEPS, lines
    assert lines[0].startswith("quantimed x8:  10% (1000/10000 iterations)") and "loss=0.123" in lines[0]
    assert lines[-1].startswith("quantimed x8: 100% (10000/10000 iterations)")
    assert "\r" not in log.getvalue()


def test_a_run_that_ends_early_or_resumes_says_where_it_stopped():
    log = io.StringIO()
    progress = Progress(300, initial=100, desc="resumed", stream=log)
    for _ in range(50):
        progress.update(1)
    progress.close()
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("resumed:  40% (120/300 iterations)"), lines
    assert lines[-1].startswith("resumed:  50% (150/300 iterations)"), lines


def test_a_time_budget_is_the_progress_when_it_binds_first():
    """async_dsgd.yaml: iterations 100000 as a ceiling, a 20 s budget: progress is training time."""
    log = io.StringIO()
    progress = Progress(100_000, desc="async_dsgd x8", stream=log, time_budget_s=20)
    for i in range(1, 2001):
        progress.update(1, elapsed_s=i * 0.01)  # 2,000 iterations in 20 s of training
    progress.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == LINE_STEPS, lines
    assert lines[4].startswith("async_dsgd x8:  50% (10.0/20 s of training, 1000 iterations)"), lines[4]
    assert lines[-1].startswith("async_dsgd x8: 100% (20.0/20 s of training, 2000 iterations)"), lines[-1]
    assert progress.fraction == 1.0
    # the iteration ceiling still counts when it is reached first
    early = Progress(100, time_budget_s=1000, stream=io.StringIO())
    early.update(50, elapsed_s=1.0)
    assert early.fraction == 0.5


def test_a_terminal_gets_a_bar_against_the_budget_in_seconds():
    terminal = FakeTerminal()
    progress = Progress(100_000, desc="async", stream=terminal, time_budget_s=20)
    for i in range(1, 201):
        progress.update(1, elapsed_s=i * 0.1, loss="0.3")
    progress.close()
    last = terminal.getvalue().split("\r")[-1]
    assert "100%" in last and "20.0/20 s" in last and "it=200" in last, last
    plain = FakeTerminal()
    bar = Progress(300, desc="quantimed", stream=plain)
    bar.update(300)
    bar.close()
    assert "300/300" in plain.getvalue().split("\r")[-1]


def test_disabled_progress_writes_nothing():
    log = io.StringIO()
    progress = Progress(10, enabled=False, stream=log)
    progress.update(10)
    progress.close()
    assert log.getvalue() == ""


def test_the_result_line_reads_the_summary_and_bounds_what_it_echoes():
    summary = {"algorithm": "quantimed", "iterations": 300, "time_s": 14.47, "eval_loss": 0.133,
               "eval_accuracy": 0.9694, "consensus_error": 0.349, "bytes_sent": 9_216_000}
    assert result_line(summary, "runs/quickstart") == (
        "qtd: quantimed: 300 iterations, training time 14.5 s, eval loss 0.1330, accuracy 0.9694, consensus "
        "error 0.349, 9.2 MB sent; results in runs/quickstart")
    sim = result_line({**summary, "simulated": True, "wall_s": 3.2, "eval_loss": None}, "runs/x")
    assert "virtual time 14.5 s" in sim and "eval loss n/a" in sim and sim.endswith("3.2 s wall; results in runs/x")
    assert len(result_line({"algorithm": "a" * 10_000}, "o" * 10_000)) < 500
