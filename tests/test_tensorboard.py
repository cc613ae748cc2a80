"""The TensorBoard run directory, read back with TensorBoard's own reader: the documented tags, the
resolved config, the hyperparameters (for comparing runs side by side), and a resumed run that shows
every step once."""

import shutil

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from tests.harness import REPO, run_single_node

pytestmark = pytest.mark.slow

GLOBAL_SCALARS = {"eval/loss", "eval/accuracy", "eval/consensus_error", "comm/bytes_sent_total", "time/train_s",
                  "hparam/eval_loss", "hparam/eval_accuracy", "hparam/time_s"}
NODE_SCALARS = {"node/train_loss", "node/samples", "node/compute_s", "node/wait_s", "node/bytes_sent", "node/speed"}


def _steps(accumulator: EventAccumulator, tag: str) -> list[int]:
    return [event.step for event in accumulator.Scalars(tag)]


def test_tags_config_hparams_and_a_resumed_run_read_back(tmp_path):
    out = tmp_path / "run"
    overrides = ["topology.nodes=1", "data.name=synthetic", "model.hidden=[8]", "run.iterations=10",
                 "run.eval_every=5", "run.checkpoint_every=5", "run.progress=false", f"run.out_dir={out}",
                 "emulation.stragglers=true", "algorithm.deadline_s=0.1"]  # V >= 10: a sample or more each step
    first = run_single_node(REPO / "configs" / "quickstart.yaml", overrides)
    assert first.returncode == 0, first.stderr[-3000:]
    # as if the run had died after its checkpoint at iteration 5: the restart redoes 6..10
    shutil.rmtree(out / "checkpoints" / "iter_00000010")
    second = run_single_node(REPO / "configs" / "quickstart.yaml", overrides)
    assert second.returncode == 0, second.stderr[-3000:]

    run = EventAccumulator(str(out / "tensorboard" / "global"), size_guidance={"tensors": 0}).Reload()
    assert GLOBAL_SCALARS <= set(run.Tags()["scalars"]), run.Tags()
    for tag in ("eval/loss", "eval/accuracy", "eval/consensus_error", "comm/bytes_sent_total"):
        assert _steps(run, tag) == [5, 10], tag  # once each, although 10 was logged by both attempts
    assert "run:\n  out_dir:" in run.Tensors("config/text_summary")[-1].tensor_proto.string_val[0].decode()

    content = run.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["algorithm.name"].string_value == "quantimed"
    assert hparams["compression.bits"].number_value == 4
    assert hparams["topology.nodes"].number_value == 1 and hparams["run.out_dir"].string_value == str(out)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {"hparam/eval_loss", "hparam/eval_accuracy",
                                                              "hparam/time_s"}

    node = EventAccumulator(str(out / "tensorboard" / "node_000")).Reload()
    assert NODE_SCALARS <= set(node.Tags()["scalars"]), node.Tags()
    for tag in NODE_SCALARS:
        assert _steps(node, tag) == list(range(1, 11)), tag
