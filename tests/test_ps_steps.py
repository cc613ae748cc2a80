"""Parameter-server steps in 4 real gloo processes, checked against the single-process reference."""

import pytest
import torch
from torch.testing import assert_close

from qtd.compress import sign_message_nbytes, topk_message_nbytes
from qtd.config import load_config
from tests.harness import REPO, run_ranks
from tests.ps_reference import reference_ps

pytestmark = pytest.mark.slow

CONFIG = str(REPO / "configs" / "ps_digits.yaml")
COMMON = ["ps.batch_size=8", "ps.check_every=1", "topology.nodes=4", "ps.lr=0.01"]
CASES = {
    "dense": ["ps.compressor=none"],
    "topk_full": ["ps.compressor=topk", "ps.k_ratio=1.0"],
    "topk_ef_fp16": ["ps.compressor=topk", "ps.k_ratio=0.05", "ps.value_bits=16", "ps.warmup_steps=2"],
    "topk_no_ef": ["ps.compressor=topk", "ps.k_ratio=0.05", "ps.error_feedback=false"],
    "blocksign_ef": ["ps.compressor=blocksign"],
}
ITERATIONS = 3


@pytest.fixture(scope="module")
def ps_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ps_steps")
    cases = {name: COMMON + extra for name, extra in CASES.items()}
    run_ranks("tests.workers:ps_worker", 4, tmp, {"config": CONFIG, "cases": cases, "iterations": ITERATIONS},
              timeout=150)
    return [torch.load(tmp / f"rank{r}.out", weights_only=True) for r in range(4)]


def _reference(name):
    return reference_ps(load_config(CONFIG, COMMON + CASES[name]), ITERATIONS)


@pytest.mark.parametrize("name", list(CASES))
def test_replicas_stay_bit_identical(ps_runs, name):
    first = ps_runs[0]["cases"][name]
    for run in ps_runs[1:]:
        case = run["cases"][name]
        for a, b in zip(first["trajectory"], case["trajectory"]):
            assert torch.equal(a, b)
        for key in ("m", "v", "v_hat"):
            assert torch.equal(first[key], case[key]), key


@pytest.mark.parametrize("name", ["topk_ef_fp16", "topk_no_ef", "blocksign_ef"])
def test_compressed_runs_match_the_single_process_reference_exactly(ps_runs, name):
    reference = _reference(name)
    case = ps_runs[0]["cases"][name]
    assert torch.equal(case["trajectory"][-1], reference.theta)
    assert torch.equal(case["v_hat"], reference.state.v_hat)
    for rank, run in enumerate(ps_runs):
        residual = run["cases"][name]["residual"]
        if name == "topk_no_ef":
            assert residual is None
        else:
            assert torch.equal(residual, reference.residuals[rank])


def test_topk_with_k_100_percent_is_exactly_dense_amsgrad(ps_runs):
    dense = reference_ps(load_config(CONFIG, COMMON + CASES["dense"]), ITERATIONS)
    topk = ps_runs[0]["cases"]["topk_full"]
    for t in range(ITERATIONS):
        partial = reference_ps(load_config(CONFIG, COMMON + CASES["dense"]), t + 1) if t < ITERATIONS - 1 else dense
        assert torch.equal(topk["trajectory"][t], partial.theta), t
    for run in ps_runs:
        assert torch.count_nonzero(run["cases"]["topk_full"]["residual"]) == 0
    # the real all-reduce sums in another order: equal up to float rounding
    assert_close(ps_runs[0]["cases"]["dense"]["trajectory"][-1], dense.theta, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["topk_ef_fp16", "blocksign_ef", "topk_full"])
def test_error_feedback_invariant_sent_plus_residual_is_the_gradient_sum(ps_runs, name):
    for run in ps_runs:
        case = run["cases"][name]
        assert_close(case["sent_sum"] + case["residual"].double(), case["grad_sum"], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(case["sent_sum"], case["grad_sum"]) or name == "topk_full"


def test_byte_counters_are_the_message_sizes(ps_runs):
    numel = ps_runs[0]["cases"]["dense"]["m"].numel()
    k = round(0.05 * numel)
    expected = {"dense": 4 * numel, "topk_full": topk_message_nbytes(numel, numel, 32),
                "topk_ef_fp16": topk_message_nbytes(numel, k, 16), "topk_no_ef": topk_message_nbytes(numel, k, 32),
                "blocksign_ef": sign_message_nbytes(numel, 8)}
    for run in ps_runs:
        for name, nbytes in expected.items():
            case = run["cases"][name]
            assert case["message_nbytes"] == nbytes, name
            assert case["upload_bytes"] == ITERATIONS * nbytes
            if name == "dense":  # ring all-reduce: 2 (n-1)/n of the buffer
                assert case["bytes_sent"] == ITERATIONS * 2 * 3 * (nbytes // 4)
            else:  # ring all-gather: n - 1 messages through every worker
                assert case["bytes_sent"] == ITERATIONS * 3 * nbytes


def test_replica_drift_of_one_ulp_is_detected_on_every_rank(ps_runs):
    for run in ps_runs:
        theta_drift, moment_drift = run["drift"]
        assert "rank(s) 2 differs from rank 0" in theta_drift and "drifted apart" in theta_drift
        assert "rank(s) 1 differs from rank 0" in moment_drift
