"""Bad input, generated: every malformed config, override, YAML file, graph, checkpoint, command-line flag
or peer message ends in one QtdError whose message names what to change and is bounded in length (one
``qtd: error:`` line through every entry point, before any process starts where it can be checked then),
never in another exception, a traceback, a hang or a line as long as the input."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import math
import os
import pickle
import time
import typing
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from qtd.config import Config, config_from_dict, load_config, read_yaml
from qtd.config.schema import (ALLOWED_BITS, MAX_BATCH, MAX_DURATION_S, MAX_NODES, MAX_SEED, MIN_SPEED)
from qtd.errors import MAX_MESSAGE_CHARS, CheckpointError, QtdError
from qtd.metrics.checkpoint import FORMAT, content_checksum, load_node_checkpoint, save_node_checkpoint
from qtd.topology import build_topology
from tests.harness import REPO, run_qtd, run_single_node

QUICKSTART = REPO / "configs" / "quickstart.yaml"
BASE = read_yaml(QUICKSTART)
SLOW_EXAMPLE_S = 20.0  # far above any honest example, even on a loaded machine: beyond it, a hang

SECTIONS = {f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)
            if dataclasses.is_dataclass(typing.get_type_hints(Config)[f.name])}
KEYS = [("mode",)] + [(section, f.name) for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)]

junk = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)
bad_positive = st.floats(max_value=0.0) | st.just(math.nan) | st.just(math.inf) | st.just(-math.inf)
# every duration becomes a sleep, a wait or a timedelta somewhere: above the bound it would overflow one
DURATIONS = [("comm", "timeout_s"), ("algorithm", "deadline_s"), ("emulation", "comm_time_s"),
             ("emulation", "link_latency_s"), ("run", "time_budget_s"), ("run", "eval_every_s")]
too_long = st.floats(min_value=MAX_DURATION_S, exclude_min=True, allow_infinity=False) | st.just(1e15)
small_name = st.from_regex(r"[a-z_]{1,12}", fullmatch=True)


def _primes(limit: int) -> list[int]:
    return [n for n in range(5, limit) if all(n % d for d in range(2, math.isqrt(n) + 1))]


@st.composite
def mutation(draw) -> tuple[str, tuple[str, ...], object]:
    """One thing wrong with a config: (kind, key path, value); the message must name the key path."""
    kind = draw(st.sampled_from(["type", "unknown", "section", "range", "graph"]))
    if kind == "type":
        return kind, draw(st.sampled_from(KEYS)), draw(junk)
    if kind == "unknown":
        section = draw(st.sampled_from([None, *SECTIONS]))
        known = {f.name for f in dataclasses.fields(SECTIONS[section] if section else Config)}
        name = draw(small_name.filter(lambda n: n not in known))
        return kind, ((section, name) if section else (name,)), draw(junk)
    if kind == "section":
        return kind, (draw(st.sampled_from(list(SECTIONS))),), draw(
            junk.filter(lambda v: v is not None and not isinstance(v, dict)))
    if kind == "range":
        key, value = draw(st.one_of(
            st.tuples(st.just(("compression", "bits")), st.integers(-300, 300).filter(lambda b: b not in ALLOWED_BITS)),
            st.tuples(st.sampled_from([("algorithm", "deadline_s"), ("algorithm", "alpha"), ("algorithm", "eps"),
                                       ("comm", "timeout_s"), ("topology", "kappa"), ("ps", "lr")]), bad_positive),
            st.tuples(st.sampled_from([("run", "iterations"), ("run", "eval_every"), ("algorithm", "batch_size"),
                                       ("algorithm", "micro_batch_size")]), st.integers(-2**40, 0)),
            st.tuples(st.just(("topology", "nodes")), st.integers(-2**40, 0) | st.integers(MAX_NODES + 1, 2**62)),
            st.tuples(st.sampled_from([("run", "seed"), ("topology", "seed")]),
                      st.integers(-2**62, -1) | st.integers(MAX_SEED + 1, 2**62)),
            st.tuples(st.just(("topology", "p")), st.floats(max_value=0.0) | st.floats(min_value=1.0, exclude_min=True)
                      | st.just(math.nan)),
            st.tuples(st.sampled_from(DURATIONS), too_long),
            st.tuples(st.sampled_from([("emulation", "speed_low"), ("emulation", "speed_high")]),
                      st.floats(min_value=0.0, max_value=MIN_SPEED, exclude_max=True, exclude_min=True)),
            st.tuples(st.sampled_from([("algorithm", "batch_size"), ("algorithm", "micro_batch_size"),
                                       ("ps", "batch_size")]), st.integers(MAX_BATCH + 1, 2**62)),
        ))
        return kind, key, value
    graph = draw(st.one_of(
        st.builds(lambda n: {"kind": "torus", "nodes": n}, st.sampled_from(_primes(200))),
        st.builds(lambda n, f: {"kind": "erdos_renyi", "nodes": n, "p": f * math.log(n) / n},
                  st.integers(30, 120), st.floats(0.01, 0.15)),
        st.builds(lambda n, k: {"kind": "ring", "nodes": n, "kappa": k}, st.integers(4, 64), st.floats(0.01, 1.99)),
        st.builds(lambda name: {"kind": "file", "nodes": 6, "path": name},
                  st.sampled_from(["missing.edges", "disconnected.edges", "garbage.edges", "wrong_size.edges"])),
    ))
    return kind, ("topology",), graph


def _apply(data: dict, change: tuple[str, tuple[str, ...], object], files: Path) -> dict:
    kind, path, value = change
    if kind == "graph":
        graph = dict(value)
        if "path" in graph:
            graph["path"] = str(files / graph["path"])
        data["topology"] = {**(data.get("topology") if isinstance(data.get("topology"), dict) else {}), **graph}
        return data
    if kind == "section":
        data[path[0]] = value
        return data
    node = data
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value
    return data


@pytest.fixture(scope="module")
def edge_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("edges")
    (folder / "disconnected.edges").write_text("0 1\n1 2\n2 0\n3 4\n4 5\n5 3\n")  # two triangles
    (folder / "garbage.edges").write_text("0 1\nthis is not an edge\n\x00\x01\n")
    (folder / "wrong_size.edges").write_text("0 1\n1 2\n2 3\n3 4\n4 5\n5 6\n6 7\n7 0\n")  # 8 nodes, not 6
    return folder


def _check_config_outcome(data: dict, named: list[str]) -> str | None:
    """Build config + topology; None when valid, the message when refused; anything else fails the test."""
    started = time.monotonic()
    try:
        config = config_from_dict(data)
        build_topology(config.topology)
        outcome = None
    except QtdError as exc:
        outcome = str(exc)
        assert outcome and "\n" not in outcome, f"not one line: {outcome!r}"
        assert len(outcome) <= MAX_MESSAGE_CHARS, f"{len(outcome)} characters: {outcome[:300]!r}..."
        assert any(name in outcome for name in named), f"{outcome!r} names none of {named}"
    assert time.monotonic() - started < SLOW_EXAMPLE_S, f"took {time.monotonic() - started:.0f} s: {data}"
    return outcome


def _names(changes) -> list[str]:
    return [".".join(path) for _, path, _ in changes]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.lists(mutation(), min_size=1, max_size=3))
def test_200_malformed_configs_end_in_one_message_naming_the_key(edge_files, changes):
    data = copy.deepcopy(BASE)
    for change in changes:
        data = _apply(data, change, edge_files)
    _check_config_outcome(data, _names(changes))


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
       raw=st.booleans(), junk_value=junk)
def test_arbitrary_yaml_files_load_or_end_in_a_config_error(tmp_path_factory, text, raw, junk_value):
    path = tmp_path_factory.mktemp("yaml") / "config.yaml"
    if raw:
        path.write_bytes(text.encode("latin-1", errors="replace"))
    else:
        path.write_text(text if text.strip() else yaml.safe_dump(junk_value))
    try:
        build_topology(load_config(path).topology)
    except QtdError as exc:
        assert str(exc) and "\n" not in str(exc) and len(str(exc)) <= MAX_MESSAGE_CHARS, repr(str(exc))


override_text = st.one_of(
    st.builds(lambda key, value: f"{'.'.join(key)}={value}", st.sampled_from(KEYS),
              junk.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("\n...").strip())),
    st.builds(lambda key, value: f"{key}={value}", st.text(max_size=20), st.text(max_size=20)),
    st.text(max_size=30),
)


@settings(max_examples=200, deadline=None)
@given(overrides=st.lists(override_text, min_size=1, max_size=3))
def test_arbitrary_set_overrides_apply_or_end_in_a_config_error(overrides):
    started = time.monotonic()
    try:
        build_topology(load_config(QUICKSTART, overrides).topology)
    except QtdError as exc:
        assert str(exc) and "\n" not in str(exc) and len(str(exc)) <= MAX_MESSAGE_CHARS, repr(str(exc))
    assert time.monotonic() - started < SLOW_EXAMPLE_S


def test_out_of_range_values_each_name_their_key():
    cases = {"compression.bits=9": "compression.bits", "compression.bits=0": "compression.bits",
             "algorithm.deadline_s=0": "algorithm.deadline_s", "algorithm.deadline_s=.inf": "algorithm.deadline_s",
             "algorithm.alpha=-1": "algorithm.alpha", "algorithm.eps=.nan": "algorithm.eps",
             "comm.timeout_s=.inf": "comm.timeout_s", f"topology.nodes={MAX_NODES + 1}": "topology.nodes",
             f"run.seed={MAX_SEED + 1}": "run.seed", "emulation.speed_high=.inf": "emulation.speed_high",
             "comm.timeout_s=1e15": "comm.timeout_s", "algorithm.deadline_s=1e300": "algorithm.deadline_s",
             "emulation.speed_low=1e-300": "emulation.speed_low", "run.time_budget_s=2e6": "run.time_budget_s",
             f"algorithm.batch_size={MAX_BATCH + 1}": "algorithm.batch_size"}
    for override, key in cases.items():
        with pytest.raises(QtdError, match=key.replace(".", r"\.")):
            load_config(QUICKSTART, [override])


def test_numbers_without_a_dot_are_numbers_and_the_bounds_are_sleeps_and_timedeltas_that_work():
    """YAML 1.1 reads 1e15 as a string; a float key takes it as the number it is (and the bound applies).
    At every bound, the waits, sleeps and timedeltas the engine derives stay valid."""
    import datetime
    import threading

    from qtd.comm import LinkModel
    assert load_config(QUICKSTART, ["algorithm.alpha=1e-3"]).algorithm.alpha == 1e-3
    with pytest.raises(QtdError, match=r"comm\.timeout_s=.* must be at most 1,000,000 seconds"):
        load_config(QUICKSTART, ["comm.timeout_s=1e15"])
    config = load_config(QUICKSTART, [f"comm.timeout_s={MAX_DURATION_S}"])
    datetime.timedelta(seconds=config.comm.timeout_s)  # what the process group and the channels build
    link = LinkModel.from_copy_time(MAX_DURATION_S, 10, latency_s=MAX_DURATION_S)
    longest_link = link.ring_allreduce_s(4 * 10, MAX_NODES)  # float32 all-reduce: 2x a 16-bit copy per byte
    assert max(longest_link, MAX_BATCH / MIN_SPEED, MAX_DURATION_S) < threading.TIMEOUT_MAX


def test_the_largest_allowed_seed_works_where_seeds_are_used():
    """The seed bound exists because the engine scales and offsets seeds; at the bound they still work."""
    from qtd.engine.problem import build_problem, module_seed
    config = load_config(QUICKSTART, [f"run.seed={MAX_SEED}", "data.name=synthetic", "topology.nodes=4",
                                      f"topology.seed={MAX_SEED}", "topology.kind=erdos_renyi"])
    problem = build_problem(config)
    problem.node_sampler(3, config.run.seed).sample(4)
    torch.manual_seed(module_seed(config.run.seed, 3))
    build_topology(config.topology)


# -- checkpoints ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("ckpt")
    path = save_node_checkpoint(out, 10, 1, {"params": torch.randn(300), "sampler": {"position": 3},
                                             "counters": {"time_s": 1.5}})
    assert load_node_checkpoint(path, 1)["iteration"] == 10
    return path.read_bytes()


class Foreign:
    """A pickled object of a class the weights-only loader must refuse."""


def _load_expecting_error(tmp_path_factory, raw: bytes, rank: int | None = 1) -> CheckpointError | dict:
    path = tmp_path_factory.mktemp("bad") / "node_001.pt"
    path.write_bytes(raw)
    try:
        return load_node_checkpoint(path, rank)
    except CheckpointError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc), str(exc)
        return exc


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_truncated_checkpoints_are_refused_with_the_path_and_what_to_do(tmp_path_factory, good_checkpoint, data):
    cut = data.draw(st.integers(0, len(good_checkpoint) - 1), label="truncated at byte")
    outcome = _load_expecting_error(tmp_path_factory, good_checkpoint[:cut])
    assert isinstance(outcome, CheckpointError)
    assert "run.resume=never" in str(outcome)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupted_or_random_files_never_escape_as_other_errors(tmp_path_factory, good_checkpoint, data):
    if data.draw(st.booleans(), label="random bytes"):
        raw = data.draw(st.binary(max_size=2000))
    else:
        raw = bytearray(good_checkpoint)
        for position in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=8)):
            raw[position] ^= data.draw(st.integers(1, 255))
        raw = bytes(raw)
    outcome = _load_expecting_error(tmp_path_factory, raw)
    assert isinstance(outcome, (CheckpointError, dict))  # a flip in padding may leave a readable file


def _sealed(content: dict) -> dict:
    return {**content, "checksum": content_checksum(content)}


foreign_objects = st.one_of(
    junk, st.builds(torch.zeros, st.integers(0, 5)),
    st.dictionaries(st.text(max_size=8), junk, max_size=4),
    st.builds(lambda rank: _sealed({"format": FORMAT, "iteration": 1, "rank": rank}),
              st.integers(-5, 50).filter(lambda r: r != 1)),
    st.builds(lambda fmt: {"format": fmt, "rank": 1},
              st.text(max_size=20).filter(lambda f: not f.startswith("qtd-checkpoint-"))),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(obj=foreign_objects)
def test_foreign_files_are_refused_naming_what_they_are_not(tmp_path_factory, obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    outcome = _load_expecting_error(tmp_path_factory, buffer.getvalue())
    assert isinstance(outcome, CheckpointError), outcome
    assert "not a qtd checkpoint" in str(outcome) or "belongs to node" in str(outcome), str(outcome)


def test_a_single_flipped_bit_in_a_saved_model_is_caught(tmp_path):
    """torch.load does not check what it reads: a flipped exponent bit once loaded as a parameter of 1.5e37."""
    params = torch.linspace(-1, 1, 257)
    path = save_node_checkpoint(tmp_path, 10, 1, {"params": params})
    raw = bytearray(path.read_bytes())
    where = bytes(raw).find(params.numpy().tobytes())
    assert where > 0  # the tensor is stored as its raw bytes
    raw[where + 4 * 100 + 3] ^= 0x40  # one exponent bit of params[100]
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="is damaged: its content does not match the checksum"):
        load_node_checkpoint(path, 1)


def test_checkpoints_of_an_older_format_say_so(tmp_path_factory):
    buffer = io.BytesIO()
    torch.save({"format": "qtd-checkpoint-1", "iteration": 1, "rank": 1, "params": torch.zeros(3)}, buffer)
    outcome = _load_expecting_error(tmp_path_factory, buffer.getvalue())
    assert isinstance(outcome, CheckpointError) and "written by an older qtd" in str(outcome)


def test_pickles_of_arbitrary_classes_and_missing_files_are_refused(tmp_path_factory, tmp_path):
    for raw in (pickle.dumps(Foreign(), protocol=2),
                pickle.dumps({"format": "qtd-checkpoint-1", "x": Foreign()}, protocol=2)):
        assert isinstance(_load_expecting_error(tmp_path_factory, raw), CheckpointError)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_node_checkpoint(tmp_path / "nowhere.pt")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_node_checkpoint(tmp_path)  # a directory


# -- through the real entry points ----------------------------------------------------------------------

def _assert_one_error_line(result, *fragments: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("qtd: error: "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(changes=st.lists(mutation(), min_size=1, max_size=2))
def test_generated_bad_configs_through_qtd_topology_print_one_line(tmp_path_factory, edge_files, changes):
    data = copy.deepcopy(BASE)
    for change in changes:
        data = _apply(data, change, edge_files)
    message = _check_config_outcome(data, _names(changes))
    assume(message is not None)
    path = tmp_path_factory.mktemp("cli") / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))  # same key order, so the same first error
    _assert_one_error_line(run_qtd(["topology", str(path)], timeout=120), message)


@pytest.mark.parametrize("args, fragment", [
    (["launch", "no/such/config.yaml"], "config file 'no/such/config.yaml' does not exist"),
    (["launch", "configs/quickstart.yaml", "--set", "topology.kind=torus", "--set", "topology.nodes=7"],
     "topology.nodes=7 cannot be laid out as a 2-D torus"),
    (["launch", "configs/quickstart.yaml", "--set", "algorithm.deadline_s=-1"], "algorithm.deadline_s=-1"),
    (["launch", "configs/quickstart.yaml", "--set", "run.iterationz=5"], "did you mean run.iterations?"),
    (["launch", "configs/quickstart.yaml", "--set", "topology.nodes=many"], "topology.nodes='many' has the wrong type"),
    (["launch", "configs/quickstart.yaml", "--set", "topology=3"], "topology is a section"),
    (["launch", "configs/quickstart.yaml", "--set", "topology.kind=erdos_renyi", "--set", "topology.p=0.01",
      "--set", "topology.nodes=60"], "raise topology.p"),
    (["topology", "configs/quickstart.yaml", "--set", "topology.kind=file", "--set", "topology.path=/no/edges"],
     "/no/edges"),
    (["topology", "configs/quickstart.yaml", "--set", "topology.kind=ring", "--set", "topology.kappa=1"],
     "topology.kappa"),
])
def test_bad_input_through_the_cli_is_one_line(args, fragment):
    _assert_one_error_line(run_qtd(args, timeout=120), fragment)


def test_a_bad_yaml_file_through_the_cli_is_one_line(tmp_path):
    (tmp_path / "broken.yaml").write_text("run:\n  iterations: [1, 2\n topology: {")
    _assert_one_error_line(run_qtd(["launch", str(tmp_path / "broken.yaml")], timeout=60), "is not valid YAML")


def _single_node(tmp_path: Path, overrides: list[str]):
    return run_single_node(QUICKSTART, ["run.progress=false", f"run.out_dir={tmp_path / 'run'}", *overrides])


def _node_error(result) -> str:
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("qtd: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


@pytest.mark.slow
def test_world_size_that_does_not_match_the_graph_is_one_line(tmp_path):
    line = _node_error(_single_node(tmp_path, []))
    assert "topology.nodes=8 but 1 processes were started" in line


@pytest.mark.slow
def test_missing_data_path_is_one_line_naming_data_root(tmp_path):
    line = _node_error(_single_node(tmp_path, ["topology.nodes=1", "data.name=mnist_idx",
                                               f"data.root={tmp_path / 'no_mnist_here'}"]))
    assert "data.root=" in line and "no_mnist_here" in line and "is not a directory" in line


@pytest.mark.slow
def test_resuming_from_a_truncated_or_foreign_checkpoint_is_one_line(tmp_path):
    tiny = ["topology.nodes=1", "data.name=synthetic", "model.hidden=[8]", "run.eval_every=5"]
    first = _single_node(tmp_path, tiny + ["run.iterations=5"])
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoint = tmp_path / "run" / "checkpoints" / "iter_00000005" / "node_000.pt"
    # another model in the same run directory: its settings differ, and the line says which
    line = _node_error(_single_node(tmp_path, tiny[:2] + ["model.hidden=[16]", "run.iterations=10"]))
    assert "model.hidden=[8] there, [16] here" in line and "run.resume=never" in line
    # a truncated file (a copy cut short, a full disk), and no older checkpoint to fall back to
    checkpoint.write_bytes(checkpoint.read_bytes()[:200])
    line = _node_error(_single_node(tmp_path, tiny + ["run.iterations=10"]))
    assert "iteration 5 damaged on node(s) 0" in line and "run.resume=never" in line
    # and the advice works
    again = _single_node(tmp_path, tiny + ["run.iterations=10", "run.resume=never"])
    assert again.returncode == 0, again.stderr[-3000:]


@pytest.mark.slow
def test_a_node_failing_under_qtd_launch_ends_with_its_message_and_one_summary_line(tmp_path):
    # data the launcher's check finds and the nodes do not (tests/workers.py): only the nodes can fail
    result = run_qtd(["launch", "configs/quickstart.yaml", "--set", "topology.nodes=2", "--set",
                      "data.name=tests.workers:data_only_outside_nodes", "--set", f"data.root={tmp_path / 'nowhere'}",
                      "--set", f"run.out_dir={tmp_path / 'run'}"], timeout=240)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-4000:]
    qtd_lines = [line for line in result.stderr.splitlines() if line.startswith("qtd: ")]
    assert qtd_lines[0].startswith("qtd: starting 2 nodes"), qtd_lines
    assert any("is not a directory" in line and "nowhere" in line for line in qtd_lines), result.stderr[-3000:]
    assert qtd_lines[-1].startswith("qtd: error: the run failed: node "), qtd_lines


def test_missing_data_stops_qtd_launch_and_qtd_check_before_any_node_starts(tmp_path):
    for command in ("launch", "check"):
        result = run_qtd([command, "configs/quickstart.yaml", "--set", "data.name=mnist_idx", "--set",
                          f"data.root={tmp_path / 'nowhere'}", "--set", f"run.out_dir={tmp_path / 'run'}"], timeout=120)
        _assert_one_error_line(result, "data.root=", "nowhere", "is not a directory")
    assert not (tmp_path / "run").exists()
    # a model that cannot take the data's samples is found the same way, without training
    _assert_one_error_line(run_qtd(["check", "configs/quickstart.yaml", "--set", "data.name=synthetic", "--set",
                                    "model.name=cnn"], timeout=120), "model.name=cnn", "does not fit the data")
    ok = run_qtd(["check", "configs/quickstart.yaml", "--set", f"run.out_dir={tmp_path / 'ok'}"], timeout=120)
    assert ok.returncode == 0 and ok.stdout.strip() == "8", ok.stderr[-2000:]


# -- oversized and adversarial YAML, and what messages echo -------------------------------------------------

def _alias_bomb(width: int, depth: int) -> str:
    """``depth`` levels of anchors, each a list of ``width`` aliases of the one before: width**depth values."""
    names = "abcdefghijklmnopqrstuvwxyz"
    lines = [f"a: &a [{','.join(['x'] * width)}]"]
    lines += [f"{names[d]}: &{names[d]} [{','.join([f'*{names[d - 1]}'] * width)}]" for d in range(1, depth)]
    return "\n".join(lines) + f"\nmodel: {{name: *{names[depth - 1]}}}\n"


def _load_bounded(tmp_path: Path, text: str, name: str = "adversarial.yaml") -> str | None:
    """Load a YAML file as a config; the error message (None if it loads), checked to be one short line
    that took little time and memory."""
    import tracemalloc
    path = tmp_path / name
    path.write_text(text)
    tracemalloc.start()
    started = time.monotonic()
    try:
        load_config(path)
        message = None
    except QtdError as exc:
        message = str(exc)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.monotonic() - started < SLOW_EXAMPLE_S
    assert peak < 64e6, f"{peak / 1e6:.0f} MB to read {len(text)} bytes"
    if message is not None:
        assert "\n" not in message and len(message) <= MAX_MESSAGE_CHARS, message[:500]
    return message


def test_the_issues_324_byte_alias_bomb_is_refused_in_one_short_line(tmp_path):
    text = _alias_bomb(9, 9)  # 9**9 = 387 million strings once expanded
    assert len(text) < 340
    message = _load_bounded(tmp_path, text)
    assert message is not None and "cannot be read safely" in message and "aliases expand" in message


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(1, 12), depth=st.integers(1, 12))
def test_nested_anchors_are_read_only_while_they_stay_small(tmp_path_factory, width, depth):
    from qtd.config.loader import MAX_YAML_NODES
    message = _load_bounded(tmp_path_factory.mktemp("bomb"), _alias_bomb(width, depth))
    assert message is not None  # the anchors' keys are no config keys
    sizes = [1 + width]  # values of each anchored list once expanded: itself and its items
    for _ in range(1, depth):
        sizes.append(1 + width * sizes[-1])
    expanded = 1 + sum(1 + size for size in sizes) + 1 + 2 + sizes[-1]  # + the model: {name: ...} mapping
    if expanded > MAX_YAML_NODES:
        assert "aliases expand" in message, message
    else:  # read, then refused by the schema, as any config with a stray key
        assert message.startswith("unknown config key 'a'"), message


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(depth=st.integers(1, 3000), kind=st.sampled_from(["list", "map", "block"]))
def test_deep_documents_are_refused_past_the_depth_limit(tmp_path_factory, depth, kind):
    from qtd.config.loader import MAX_YAML_DEPTH
    if kind == "list":
        text = "model: {name: " + "[" * depth + "x" + "]" * depth + "}\n"
    elif kind == "map":
        text = "model: {name: " + "{a: " * depth + "x" + "}" * depth + "}\n"
    else:
        indent = [" " * (4 + 2 * i) for i in range(depth + 1)]
        text = "model:\n  name:\n" + "".join(f"{pad}a:\n" for pad in indent[:-1]) + f"{indent[-1]}x\n"
    message = _load_bounded(tmp_path_factory.mktemp("deep"), text)
    assert message is not None
    if depth + 3 > MAX_YAML_DEPTH:
        assert any(why in message for why in ("nested deeper than", "larger than")), message
    else:
        assert "model.name=" in message, message


def test_recursive_aliases_huge_integers_and_oversized_files_are_refused(tmp_path):
    from qtd.config.loader import MAX_CONFIG_BYTES
    assert "refers to the value that contains it" in _load_bounded(tmp_path, "model: &x {name: [*x]}\n")
    assert "integer of 5,000 characters" in _load_bounded(tmp_path, "topology: {nodes: " + "1" * 5000 + "}\n")
    big = "# padding\n" * (MAX_CONFIG_BYTES // 10 + 1)
    assert "larger than" in _load_bounded(tmp_path, big)
    # a 50 MB file: refused from its size, without being read
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as handle:
        handle.truncate(50_000_000)
    with pytest.raises(QtdError, match="is larger than"):
        load_config(huge)
    assert _load_bounded(tmp_path, "", name="empty.yaml") is None  # an empty config is the defaults


def test_every_echoed_value_is_cut_whatever_its_size():
    from qtd.config import shown
    for value in ("x" * 50_000_000, ["y" * 10_000] * 1000, {"k" * 1000: [1] * 10_000}, 10 ** 5000, -10 ** 5000):
        assert len(shown(value)) <= 200
    for data in ({"model": {"name": "m" * 50_000_000}}, {"run": {"out_dir": "o" * 10_000_000, "resume": "r" * 10**7}},
                 {"z" * 5_000_000: 1}, {"run": {"seed": 10 ** 5000}},
                 {"emulation": {"speed_distribution": "fixed", "speeds": [0.5] * 100_000}}):
        with pytest.raises(QtdError) as info:
            config_from_dict(data)
        message = str(info.value)
        assert len(message) <= 600 and "\n" not in message, message[:700]


def test_a_50_megabyte_model_name_through_the_cli_is_one_short_line(tmp_path):
    from qtd.config.loader import MAX_CONFIG_BYTES
    path = tmp_path / "long_name.yaml"
    path.write_text("model:\n  name: " + "m" * (MAX_CONFIG_BYTES - 100) + "\n")
    result = run_qtd(["launch", str(path)], timeout=120)
    _assert_one_error_line(result, "model.name=", "characters) is not allowed")
    assert len(result.stderr) < 1000
    result = run_qtd(["launch", "configs/quickstart.yaml", "--set", "model.name=" + "n" * 100_000], timeout=120)
    _assert_one_error_line(result, "model.name=", "(100,000 characters)")
    assert len(result.stderr) < 1000


# -- run.out_dir, before anything starts ---------------------------------------------------------------------

@pytest.fixture()
def unwritable_out_dirs(tmp_path) -> dict[str, str]:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    return {"/proc/qtd_run": "cannot create directories in '/proc'",
            str(blocker / "run"): "is a file, not a directory",
            str(blocker): "is a file, not a directory",
            "/sys/qtd_run": "cannot create directories in '/sys'",
            str(tmp_path / ("d" * 300)): "run.out_dir="}


def test_unwritable_out_dirs_are_refused_naming_run_out_dir(unwritable_out_dirs, tmp_path):
    from qtd.config import check_out_dir
    for out_dir, fragment in unwritable_out_dirs.items():
        with pytest.raises(QtdError) as info:
            check_out_dir(out_dir)
        assert str(info.value).startswith("run.out_dir=") and fragment in str(info.value), str(info.value)
        assert "set run.out_dir to a directory you can write" in str(info.value)
    assert check_out_dir(tmp_path / "new" / "deeper") and not (tmp_path / "new").exists()  # a probe, no traces
    assert not list(tmp_path.glob(".qtd-probe-*"))


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="root writes into read-only directories; /sys stands for read-only above")
def test_a_read_only_out_dir_is_refused(tmp_path):
    from qtd.config import check_out_dir
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(QtdError, match="permission denied"):
            check_out_dir(locked / "run")
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("command", ["launch", "sim", "train", "check"])
def test_every_entry_point_refuses_an_unwritable_out_dir_before_it_starts(command):
    result = run_qtd([command, "configs/quickstart.yaml", "--set", "run.out_dir=/proc/qtd_run"], timeout=120)
    _assert_one_error_line(result, "run.out_dir='/proc/qtd_run'", "cannot create directories")


def test_python_m_qtd_train_refuses_an_unwritable_out_dir_before_joining_the_group():
    result = run_single_node(QUICKSTART, ["run.out_dir=/proc/qtd_run"], timeout=120)
    _assert_one_error_line(result, "run.out_dir='/proc/qtd_run'")


# -- every entry point's flags --------------------------------------------------------------------------

def _parse(parse, argv, capsys) -> tuple[int, str]:
    """(exit code, stderr) of an in-process argument parse; code -1 when it parsed."""
    try:
        parse(argv)
        code = -1
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


def _parsers():
    from qtd.cli.check import build_parser as check_parser
    from qtd.cli.main import build_parser as qtd_parser
    from qtd.engine.torchrun import parse_torchrun_args
    from qtd.train import build_parser as train_parser
    return {"qtd": qtd_parser().parse_args, "python -m qtd.train": train_parser().parse_args,
            "python -m qtd.cli.check": check_parser().parse_args, "qtd.engine.torchrun": parse_torchrun_args}


FLAG_WORDS = ["launch", "train", "sim", "topology", "check", "bench", "--set", "--max-restarts", "--png",
              "--config", "--quick", "--out", "--nproc-per-node", "--nproc_per_node", "--nnodes", "--standalone",
              "--max_restarts", "-m", "qtd.train", "configs/quickstart.yaml", "--", "-", "--bogus", "-x", "=", ""]
flag_token = st.one_of(st.sampled_from(FLAG_WORDS), st.integers(-2**70, 2**70).map(str),
                       st.sampled_from(["-1", "0", "1e9", "nan", "1000", "1001", "1:3", "3:1", "auto", "x" * 5000]),
                       st.text(max_size=12))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entry=st.sampled_from(["qtd", "python -m qtd.train", "python -m qtd.cli.check", "qtd.engine.torchrun"]),
       argv=st.lists(flag_token, max_size=6))
def test_generated_command_lines_parse_or_end_in_one_bounded_line(capsys, entry, argv):
    assume("-h" not in argv and "--help" not in argv)
    code, err = _parse(_parsers()[entry], argv, capsys)
    if code == -1:
        return  # parsed: the values are checked when used (tested above and below)
    assert code == 2, (entry, argv, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qtd: error: "), (entry, argv, err[:500])
    assert len(lines[0]) <= MAX_MESSAGE_CHARS + 100, len(lines[0])


def test_launcher_flags_out_of_range_are_refused_by_name(capsys):
    parsers = _parsers()
    for argv in (["launch", "c.yaml", "--max-restarts", "-1"], ["launch", "c.yaml", "--max-restarts", "x"],
                 ["launch", "c.yaml", "--max-restarts", "1001"], ["launch", "c.yaml", "--max-restarts", "9" * 40]):
        code, err = _parse(parsers["qtd"], argv, capsys)
        assert code == 2 and err.startswith("qtd: error: argument --max-restarts: ") and "0..1000" in err, err
    assert _parse(parsers["qtd"], ["launch", "c.yaml", "--max-restarts", "3"], capsys)[0] == -1
    for argv, fragment in ((["--max-restarts=-1", "-m", "qtd.train"], "--max-restarts=-1"),
                           (["--nproc-per-node=0", "-m", "qtd.train"], "--nproc-per-node='0'"),
                           (["--nproc-per-node=lots", "-m", "qtd.train"], "--nproc-per-node='lots'"),
                           (["--nnodes=3:1", "-m", "qtd.train"], "--nnodes='3:1'"),
                           (["--max-restarts=x", "-m", "qtd.train"], "--max-restarts")):
        code, err = _parse(parsers["qtd.engine.torchrun"], argv, capsys)
        assert code == 2 and err.count("\n") == 1 and err.startswith("qtd: error: ") and fragment in err, err


@pytest.mark.parametrize("args, fragment", [
    (["launch", "configs/quickstart.yaml", "--max-restarts", "-1"], "argument --max-restarts: '-1' is not allowed"),
    (["launch", "configs/quickstart.yaml", "--set", "comm.timeout_s=1e15"], "comm.timeout_s="),
    (["launch"], "the following arguments are required: config"),
    (["sim", "configs/quickstart.yaml", "--bogus"], "unrecognized arguments: --bogus"),
    ([], "the following arguments are required: command"),
    (["bench", "../../x"], "no benchmark named '../../x' (give a benchmark's name, not a path)"),
    (["topology", "configs/quickstart.yaml", "--png", "/proc/qtd.png"], "cannot write the drawing to --png"),
])
def test_bad_flags_through_the_cli_are_one_line(args, fragment):
    result = run_qtd(args, timeout=120)
    _assert_one_error_line(result, fragment)
    assert result.stdout == "", result.stdout[:500]  # nothing was done first (qtd topology printed nothing)


def test_python_m_entry_points_and_the_torchrun_wrapper_refuse_bad_flags_in_one_line():
    import subprocess
    import sys
    from tests.harness import child_env
    for argv, fragment in ((["-m", "qtd.train"], "the following arguments are required: --config"),
                           (["-m", "qtd.cli.check", "--nope"], "the following arguments are required: config"),
                           (["-m", "qtd.engine.torchrun", "--standalone", "--nproc-per-node=2", "--max-restarts=-1",
                             "-m", "qtd.train", "--config", "configs/quickstart.yaml"], "--max-restarts=-1")):
        result = subprocess.run([sys.executable, *argv], cwd=REPO, env=child_env(), capture_output=True, text=True,
                                timeout=120)
        _assert_one_error_line(result, fragment)


def test_qtd_bench_runs_only_benchmarks_named_in_benchmarks(tmp_path):
    marker = tmp_path / "ran"
    script = tmp_path / "evil.py"
    script.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    for name in (str(script), str(tmp_path / "evil"), "../" * 5 + str(script)[1:-3], "_common", "evil"):
        result = run_qtd(["bench", name], timeout=60, cwd=tmp_path)
        _assert_one_error_line(result, "no benchmark named", "available: ")
    assert not marker.exists()


# -- a peer's malformed message: every decoder's header fuzzed ----------------------------------------------

def _model_header(magic, version, bits, reserved, count, iteration, sender, offset, scale, crc_ok) -> bytes:
    import struct
    import zlib
    from qtd.compress.wire import HEADER_FORMAT
    body = struct.pack(HEADER_FORMAT, magic, version, bits, reserved, count, iteration, sender, offset, scale, 0)[:36]
    return body + struct.pack("<I", zlib.crc32(body) if crc_ok else zlib.crc32(body) ^ 1)


def _grad_header(magic, version, kind, value_bits, index_bits, reserved, numel, count, sender, iteration,
                 crc_ok) -> bytes:
    import struct
    import zlib
    from qtd.compress.gradient_wire import GRAD_HEADER_FORMAT
    body = struct.pack(GRAD_HEADER_FORMAT, magic, version, kind, value_bits, index_bits, reserved, numel, count,
                       sender, iteration, 0)[:28]
    return body + struct.pack("<I", zlib.crc32(body) if crc_ok else zlib.crc32(body) ^ 1)


def _implied(nbytes_of) -> int | None:
    try:
        nbytes = nbytes_of()
    except (ValueError, QtdError, OverflowError):
        return None
    return nbytes if nbytes < 1 << 20 else None


u64 = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 7, 8, 2**32, 2**56, 2**56 + 1, 2**57, 2**63,
                                                            2**64 - 1]))
u32 = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 3, 2**31, 2**32 - 1]))
f32 = st.floats(width=32, allow_nan=True, allow_infinity=True)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_fuzzed_model_message_headers_decode_or_raise_wire_format_errors(data):
    from qtd.compress import decode_message
    from qtd.compress.wire import MAGIC, message_nbytes
    from qtd.errors import WireFormatError
    fields = dict(magic=data.draw(st.just(MAGIC) | st.binary(min_size=4, max_size=4)),
                  version=data.draw(st.just(1) | st.integers(0, 255)),
                  bits=data.draw(st.sampled_from(ALLOWED_BITS) | st.integers(0, 255)),
                  reserved=data.draw(st.just(0) | st.integers(0, 2**16 - 1)),
                  count=data.draw(st.integers(0, 300) | u64), iteration=data.draw(u64), sender=data.draw(u32),
                  offset=data.draw(st.just(0.0) | f32), scale=data.draw(st.just(0.0) | f32),
                  crc_ok=data.draw(st.booleans() | st.just(True)))
    header = _model_header(**fields)
    implied = _implied(lambda: message_nbytes(fields["count"], fields["bits"]))
    length = implied if implied is not None and data.draw(st.booleans()) else data.draw(st.integers(0, 400))
    payload = data.draw(st.binary(min_size=max(length - 40, 0), max_size=max(length - 40, 0)))
    message = torch.frombuffer(bytearray((header + payload)[:length] or b"\0"), dtype=torch.uint8)[:length]
    try:
        decode_message(message, expected_sender=fields["sender"] if data.draw(st.booleans()) else None)
    except WireFormatError as exc:
        assert "\n" not in str(exc) and len(str(exc)) <= MAX_MESSAGE_CHARS


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_fuzzed_gradient_message_headers_decode_or_raise_wire_format_errors(data):
    from qtd.compress import BlockSignCodec, TopKCodec, decode_sign_message, decode_topk_message
    from qtd.compress.gradient_wire import GRAD_MAGIC, sign_message_nbytes, topk_message_nbytes
    from qtd.compress.uint_packing import index_bits
    from qtd.errors import WireFormatError
    kind = data.draw(st.sampled_from([1, 2]) | st.integers(0, 255))
    numel = data.draw(st.integers(1, 64) | u64)
    try:
        right_bits = index_bits(numel) if kind == 1 else 1
    except ValueError:
        right_bits = 1
    fields = dict(magic=data.draw(st.just(GRAD_MAGIC) | st.binary(min_size=2, max_size=2)),
                  version=data.draw(st.just(1) | st.integers(0, 255)), kind=kind,
                  value_bits=data.draw(st.sampled_from([16, 32]) | st.integers(0, 255)),
                  index_bits=data.draw(st.just(min(right_bits, 255)) | st.integers(0, 255)),
                  reserved=data.draw(st.just(0) | st.integers(0, 2**16 - 1)), numel=numel,
                  count=data.draw(st.integers(0, 64) | u32), sender=data.draw(u32), iteration=data.draw(u32),
                  crc_ok=data.draw(st.booleans() | st.just(True)))
    header = _grad_header(**fields)
    implied = _implied(lambda: topk_message_nbytes(numel, fields["count"], fields["value_bits"]) if kind == 1
                       else sign_message_nbytes(numel, fields["count"]))
    length = implied if implied is not None and data.draw(st.booleans()) else data.draw(st.integers(0, 300))
    payload = data.draw(st.binary(min_size=max(length - 32, 0), max_size=max(length - 32, 0)))
    message = torch.frombuffer(bytearray((header + payload)[:length] or b"\0"), dtype=torch.uint8)[:length]
    decoders = [decode_topk_message, decode_sign_message,
                TopKCodec(torch.zeros(64), 8).decode, BlockSignCodec(torch.zeros(64), [32, 32]).decode]
    for decode in decoders:
        try:
            decode(message)
        except WireFormatError as exc:
            assert "\n" not in str(exc) and len(str(exc)) <= MAX_MESSAGE_CHARS


def test_a_topk_header_claiming_2_63_elements_is_a_wire_format_error_naming_numel():
    from qtd.compress import decode_topk_message
    from qtd.compress.gradient_wire import GRAD_MAGIC, topk_message_nbytes
    from qtd.errors import WireFormatError
    for numel in (2**63, 2**57, 2**64 - 1):
        length = topk_message_nbytes(numel, 10, 32)  # the exact length the header implies: 151 bytes
        header = _grad_header(GRAD_MAGIC, 1, 1, 32, (numel - 1).bit_length(), 0, numel, 10, 3, 0, True)
        message = torch.frombuffer(bytearray(header + bytes(length - 32)), dtype=torch.uint8)
        with pytest.raises(WireFormatError, match=f"numel={numel} exceeds"):
            decode_topk_message(message)


@pytest.mark.parametrize("runner, algorithm", [("launch", "choco"), ("launch", "quantimed"), ("sim", "choco")])
def test_a_diverging_run_ends_in_one_message_per_node_naming_the_step_sizes_and_keeps_its_files(tmp_path, runner,
                                                                                             algorithm):
    # alpha = 50 blows the models up within some 30 iterations; CHOCO without overlap steps, then encodes the
    # stepped model's difference in the same iteration (where the encoder meets the NaN first)
    out = tmp_path / "run"
    sets = [f"algorithm.name={algorithm}", "algorithm.alpha=50", "algorithm.overlap=false", "topology.nodes=4",
            "run.iterations=80", "run.eval_every=5", "run.progress=false", f"run.out_dir={out}"]
    result = run_qtd([runner, str(QUICKSTART), *(arg for s in sets for arg in ("--set", s))], timeout=300)
    keys = "algorithm.alpha or algorithm.gamma" if algorithm == "choco" else "algorithm.alpha or algorithm.eps"
    assert "Traceback" not in result.stderr
    if runner == "sim":
        assert result.returncode == 1
        assert "diverged (non-finite values) by iteration" in result.stderr and keys in result.stderr
        return
    assert result.returncode == 1, result.stderr[-3000:]  # the launcher: the run failed
    lines = [line for line in result.stderr.splitlines() if "diverged" in line]
    assert lines and all(line.startswith("qtd: node ") and keys in line and str(out) in line for line in lines)
    assert result.stderr.strip().splitlines()[-1].startswith("qtd: error: the run failed: node ")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]  # the evaluations before it stay
    assert rows and rows[0]["iteration"] == 5 and all(math.isfinite(r["eval_loss"]) for r in rows[:1])
