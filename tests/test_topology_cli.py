"""`qtd topology CONFIG [--set ...] [--png PATH]`: the report, the drawing, and one-line errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qtd.errors import QtdError, TopologyError
from qtd.topology.cli import topology_command

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "topology.yaml"
    path.write_text("topology:\n  kind: ring\n  nodes: 6\n  weights: laplacian\n")
    return str(path)


def test_prints_the_report_and_writes_a_png(config_file, tmp_path, capsys):
    png = tmp_path / "plots" / "ring.png"
    assert topology_command(config_file, [], png=str(png)) == 0
    out = capsys.readouterr().out
    assert "topology      ring" in out and "nodes         6" in out and "edges         6" in out
    assert "degree        2..2" in out and "kappa = 4 (max degree + 2)" in out
    assert "beta          0.750000" in out and "spectral gap  0.250000" in out  # cos^2(pi/6), sin^2(pi/6)
    assert "   0  0.5000  1: 0.2500  5: 0.2500" in out  # rank 0's self weight and neighbours
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


@pytest.mark.parametrize("overrides, expected", [
    (["topology.kind=torus", "topology.nodes=12", "topology.weights=metropolis"],
     ["torus 3 x 4", "degree        4..4", "metropolis", "spectral gap  0.400000"]),
    (["topology.kind=erdos_renyi", "topology.nodes=60", "topology.p=0.1"],
     ["erdos_renyi G(n=60, p=0.1), seed 0", "nodes         60"]),
])
def test_overrides_pick_the_graph_and_large_graphs_skip_the_node_table(config_file, tmp_path, capsys,
                                                                      overrides, expected):
    assert topology_command(config_file, overrides, png=str(tmp_path / "g.png")) == 0
    out = capsys.readouterr().out
    for text in expected:
        assert text in out
    assert ("node  w_ii" in out) == ("topology.nodes=12" in overrides)
    assert (tmp_path / "g.png").is_file()


def test_errors_propagate_as_qtd_errors(config_file, tmp_path):
    with pytest.raises(TopologyError, match=r"topology\.nodes=7 cannot be laid out"):
        topology_command(config_file, ["topology.kind=torus", "topology.nodes=7"])
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(QtdError, match="cannot write the drawing to --png"):
        topology_command(config_file, [], png=str(blocker / "x.png"))


@pytest.mark.parametrize("overrides, message", [
    (["topology.kappa=1"], "qtd: error: topology.kappa=1 is too small"),
    (["topology.kind=grid"], "qtd: error: topology.kind='grid' is not allowed"),
])
def test_bad_config_prints_one_line_and_exits_non_zero(config_file, overrides, message):
    args = [sys.executable, "-m", "qtd.cli.main", "topology", config_file]
    for override in overrides:
        args += ["--set", override]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
