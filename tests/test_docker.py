"""The Dockerfile, checked without a Docker engine: base image, install command, entry point, build context."""

import re
import shlex
from pathlib import Path

import pytest

from tests.harness import REPO


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and backslash continuations joined."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip() if " " in line.strip() else "")
            for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _instructions(REPO / "Dockerfile")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_base_image_is_an_official_pytorch_tag_new_enough_for_the_package(dockerfile):
    froms = [args for op, args in dockerfile if op == "FROM"]
    assert len(froms) == 1, froms
    match = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda\d+\.\d+-cudnn\d+-(runtime|devel)", froms[0])
    assert match, f"{froms[0]} is not an official pytorch/pytorch:<torch>-cuda<x.y>-cudnn<n>-<runtime|devel> tag"
    required = re.search(r'"torch>=([\d.]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert _version(match.group(1)) >= _version(required), "the image's torch is older than pyproject allows"


def _pip_install_targets(command: str) -> list[str]:
    """What each `pip install` in a shell command installs, flags and extras dropped: ['-e .'] etc."""
    targets = []
    for args in re.findall(r"\bpip install ([^&;|`\n]*)", command):
        words = shlex.split(args)
        editable = "-e" in words or "--editable" in words
        targets += [("-e " if editable else "") + re.sub(r"\[.*\]$", "", w) for w in words if not w.startswith("-")]
    return targets


def test_image_installs_the_package_the_way_the_readme_and_ci_do(dockerfile):
    image = [t for op, args in dockerfile if op == "RUN" for t in _pip_install_targets(args)]
    assert image == ["-e ."], image
    ci = [t for line in (REPO / ".ci" / "run").read_text().splitlines() for t in _pip_install_targets(line)]
    readme = [t for line in (REPO / "README.md").read_text().splitlines() if "pip install" in line
              for t in _pip_install_targets(line.strip().strip("`"))]
    # the README may also show the optional CPU-only torch install that comes before it
    assert ci == ["-e ."] and readme and set(readme) - {"torch"} == {"-e ."}, (ci, readme)


def test_entrypoint_is_the_qtd_console_script(dockerfile):
    entrypoints = [args for op, args in dockerfile if op == "ENTRYPOINT"]
    assert entrypoints == ['["qtd"]'], entrypoints  # exec form: signals reach qtd, arguments are appended
    assert re.search(r'^qtd = "qtd\.cli\.main:main"$', (REPO / "pyproject.toml").read_text(), re.M)
    from qtd.cli.main import main  # noqa: F401  (the console script's target exists)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins, a path inside an ignored folder is ignored."""
    parts = path.split("/")
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            ignored = not negate
    return ignored


def test_every_copied_path_exists_and_the_build_context_keeps_what_the_install_needs(dockerfile):
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for op, args in dockerfile:
        if op in ("COPY", "ADD"):
            sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
            for source in sources:
                assert (REPO / source).exists(), f"{op} {source}: no such file in the repository"
                assert source == "." or not _ignored(source, patterns), f"{op} {source} is in .dockerignore"
    needed = ["pyproject.toml", "README.md", "configs/quickstart.yaml", "launch/slurm.sbatch"]
    needed += [str(p.relative_to(REPO)) for p in (REPO / "qtd").rglob("*.py")]
    kept_out = [path for path in needed if _ignored(path, patterns)]
    assert not kept_out, f".dockerignore leaves out files the image needs: {kept_out}"
    assert _ignored(".git/config", patterns) and _ignored("runs/quickstart/summary.json", patterns)
    assert _ignored("qtd/__pycache__/x.pyc", patterns)
