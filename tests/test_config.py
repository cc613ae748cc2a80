import pytest

from qtd.config import Config, ConfigError, config_from_dict, dump_config, load_config


def test_defaults_are_valid_and_round_trip_through_yaml(tmp_path):
    config = load_config(None, ["topology.nodes=6", "compression.bits=3", "model.hidden=[20, 10]"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config
    assert config.topology.nodes == 6 and config.model.hidden == (20, 10)


def test_overrides_are_type_checked_and_coerced():
    config = load_config(None, ["algorithm.deadline_s=1", "topology.kappa=4", "emulation.stragglers=true"])
    assert config.algorithm.deadline_s == 1.0 and isinstance(config.algorithm.deadline_s, float)
    assert config.topology.kappa == 4.0
    assert config.emulation.stragglers is True
    assert load_config(None, ["topology.kappa=null"]).topology.kappa is None


@pytest.mark.parametrize("override, names", [
    ("topology.nodez=3", ["topology.nodez", "topology.nodes"]),
    ("colour=blue", ["colour"]),
    ("compression.bits=9", ["compression.bits", "9", "1..8"]),
    ("compression.bits=4.5", ["compression.bits", "4.5"]),
    ("algorithm.name=sgd", ["algorithm.name", "quantimed"]),
    ("run.iterations=abc", ["run.iterations", "int"]),
    ("run.iterations=0", ["run.iterations", "> 0"]),
    ("emulation.stragglers=2", ["emulation.stragglers", "bool"]),
    ("topology.p=1.5", ["topology.p"]),
    ("algorithm.deadline_s=-1", ["algorithm.deadline_s"]),
    ("topology=ring", ["topology is a section"]),
    ("run.seed.x=1", ["run.seed.x"]),
    ("nokey", ["section.key=value"]),
])
def test_bad_overrides_name_the_key(override, names):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    for name in names:
        assert name in str(info.value)


def test_cross_section_checks():
    with pytest.raises(ConfigError, match="compression.bits"):
        config_from_dict({"algorithm": {"name": "dsgd"}, "compression": {"bits": 4}})
    with pytest.raises(ConfigError, match="emulation.speeds"):
        config_from_dict({"topology": {"nodes": 3},
                          "emulation": {"speed_distribution": "fixed", "speeds": [1.0, 2.0]}})
    assert config_from_dict({"algorithm": {"name": "dsgd"}, "compression": {"bits": 16}})
    with pytest.raises(ConfigError, match="algorithm.eps=12.0"):
        config_from_dict({"algorithm": {"name": "quantimed", "schedule": "constant", "eps": 12.0}})
    # eps is not used by DSGD, so a constant schedule with the quantized methods' e0 left in is fine
    assert config_from_dict({"algorithm": {"name": "dsgd", "schedule": "constant", "eps": 12.0},
                             "compression": {"bits": 16}})


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    bad.write_text("run: 3\n")
    with pytest.raises(ConfigError, match="run must be a mapping"):
        load_config(bad)


def test_every_shipped_config_loads():
    from pathlib import Path
    configs = sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml"))
    for path in configs:
        assert isinstance(load_config(path), Config), path
