"""The README stays true: every config key is documented, every shipped command names real things."""

import re
from pathlib import Path

from qtd.config import Config, config_to_dict

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _keys(data, prefix=""):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _keys(value, f"{prefix}{key}.")
        else:
            yield prefix + key


def test_every_config_key_is_in_the_config_reference():
    reference = README.split("## Config reference", 1)[1]
    missing = [key for key in _keys(config_to_dict(Config())) if f"`{key}`" not in reference]
    assert not missing, f"undocumented config keys: {missing}"


def test_readme_has_exactly_the_two_fresh_machine_commands_and_ci_runs_the_test_one():
    blocks = re.findall(r"```bash\n(.*?)```", README.split("## Two commands", 1)[1].split("\n## ", 1)[0], re.S)
    assert len(blocks) == 2
    run, test = (b.strip() for b in blocks)
    assert "pip install -e ." in run and "qtd launch configs/quickstart.yaml" in run
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert test.split("&& ", 2)[-1] in ci  # the install and test command, exactly as the README says


def test_qtd_bench_names_the_available_benchmarks_on_a_typo():
    from tests.harness import run_qtd
    result = run_qtd(["bench", "wallclok"], timeout=60)
    assert result.returncode == 2
    assert "no benchmark named 'wallclok'" in result.stderr and "wallclock" in result.stderr


def test_the_algorithm_table_lists_exactly_the_registry():
    from qtd.algorithms import NAMES
    table = README.split("| name | each iteration, at node i |", 1)[1].split("\n\n", 1)[0]
    assert re.findall(r"^\| `([a-z_]+)` \|", table, re.M) == list(NAMES)
