"""Bad input, generated: every malformed config, override, YAML file, graph or checkpoint ends in one
QtdError whose message names what to change (one ``qtd: error:`` line through the CLI), never in another
exception, a traceback or a hang."""

from __future__ import annotations

import copy
import dataclasses
import io
import math
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
from qtd.config.schema import ALLOWED_BITS, MAX_NODES, MAX_SEED
from qtd.errors import CheckpointError, QtdError
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
        assert str(exc) and "\n" not in str(exc), repr(str(exc))


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
        assert str(exc) and "\n" not in str(exc), repr(str(exc))
    assert time.monotonic() - started < SLOW_EXAMPLE_S


def test_out_of_range_values_each_name_their_key():
    cases = {"compression.bits=9": "compression.bits", "compression.bits=0": "compression.bits",
             "algorithm.deadline_s=0": "algorithm.deadline_s", "algorithm.deadline_s=.inf": "algorithm.deadline_s",
             "algorithm.alpha=-1": "algorithm.alpha", "algorithm.eps=.nan": "algorithm.eps",
             "comm.timeout_s=.inf": "comm.timeout_s", f"topology.nodes={MAX_NODES + 1}": "topology.nodes",
             f"run.seed={MAX_SEED + 1}": "run.seed", "emulation.speed_high=.inf": "emulation.speed_high"}
    for override, key in cases.items():
        with pytest.raises(QtdError, match=key.replace(".", r"\.")):
            load_config(QUICKSTART, [override])


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
    for raw in (pickle.dumps(Foreign(), protocol=2), pickle.dumps({"format": "qtd-checkpoint-1", "x": Foreign()}, protocol=2)):
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
    result = run_qtd(["launch", "configs/quickstart.yaml", "--set", "topology.nodes=2", "--set",
                      "data.name=mnist_idx", "--set", f"data.root={tmp_path / 'nowhere'}", "--set",
                      f"run.out_dir={tmp_path / 'run'}"], timeout=240)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-4000:]
    qtd_lines = [line for line in result.stderr.splitlines() if line.startswith("qtd: ")]
    assert any("is not a directory" in line and "nowhere" in line for line in qtd_lines), result.stderr[-3000:]
    assert qtd_lines[-1].startswith("qtd: error: the run failed: node "), qtd_lines
