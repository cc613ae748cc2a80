"""YAML in, dataclasses out: type-checked values, dotted overrides, unknown keys rejected.

YAML is read with ``yaml.SafeLoader`` under limits (:data:`MAX_CONFIG_BYTES`, :data:`MAX_YAML_DEPTH`,
:data:`MAX_YAML_NODES` counted after aliases expand), so an oversized file or a few hundred bytes of nested
anchors (an "alias bomb") end in one message instead of gigabytes of memory.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from ..echo import cut, shown
from .schema import Config, ConfigError

MAX_CONFIG_BYTES = 256 * 1024  # a config is a few kilobytes; long lists (edge lists) live in their own files
MAX_YAML_DEPTH = 32  # nesting levels of one document
MAX_YAML_NODES = 10_000  # values of one document once every alias is expanded (a 1,024-node speeds list is ~1,000)
MAX_INT_DIGITS = 400  # an integer literal longer than this is refused (Python refuses 4,300 digits itself)


class _LimitedLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses too-deep documents, too many values and over-long integers while it reads."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._values = 0
        self._depth = 0

    def compose_node(self, parent, index):
        self._values += 1
        if self._values > MAX_YAML_NODES:
            raise yaml.composer.ComposerError(None, None, f"it holds more than {MAX_YAML_NODES:,} values",
                                              self.peek_event().start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"it is nested deeper than {MAX_YAML_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node):
        digits = len(node.value)
        if digits > MAX_INT_DIGITS:
            raise yaml.constructor.ConstructorError(None, None, f"an integer of {digits:,} characters is too long",
                                                    node.start_mark)
        return super().construct_yaml_int(node)


_LimitedLoader.add_constructor("tag:yaml.org,2002:int", _LimitedLoader.construct_yaml_int)


def _expanded_values(node: yaml.Node) -> int:
    """How many values ``node`` stands for once every alias is expanded (shared nodes count each time
    they are used), at most a little over MAX_YAML_NODES; an alias inside its own anchor is refused."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(current: yaml.Node) -> int:
        key = id(current)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise yaml.composer.ComposerError(None, None, "an alias refers to the value that contains it",
                                              current.start_mark)
        open_nodes.add(key)
        total = 1
        if isinstance(current, yaml.SequenceNode):
            children = current.value
        elif isinstance(current, yaml.MappingNode):
            children = [child for pair in current.value for child in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > MAX_YAML_NODES:
                raise yaml.composer.ComposerError(
                    None, None, f"its aliases expand to more than {MAX_YAML_NODES:,} values", current.start_mark)
        open_nodes.discard(key)
        sizes[key] = total
        return total

    return size(node)


def _check_flow_depth(text: str) -> None:
    """Refuse ``[[[[...`` and ``{a: {a: ...`` past MAX_YAML_DEPTH before PyYAML's scanner reads them: it keeps
    one pending key per open bracket and rescans them at every token, quadratic in the nesting."""
    depth, quote, comment, line, column = 0, "", False, 1, 0
    for char in text:
        column += 1
        if char == "\n":
            line, column, comment = line + 1, 0, False
            continue
        if comment:
            continue
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#":
            comment = True
        elif char in "[{":
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"it is nested deeper than {MAX_YAML_DEPTH} levels",
                    yaml.Mark("", 0, line - 1, column - 1, None, None))
        elif char in "]}":
            depth = max(depth - 1, 0)


def load_yaml_text(text: str) -> Any:
    """One YAML document as plain data, read safely and within the limits above.

    Raises ``yaml.YAMLError`` (syntax, or a limit: its message says which) for the caller to report.
    """
    _check_flow_depth(text)
    loader = _LimitedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_values(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d{1,4})?")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"{key}={shown(value)} has the wrong type: expected {_type_name(tp)}")
    if origin is tuple:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={shown(value)} has the wrong type: expected {_type_name(tp)}")
        item_type = typing.get_args(tp)[0]
        return tuple(_coerce(f"{key}[{i}]", item, item_type) for i, item in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e15 and 1e-3 (no dot) as strings
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key}={shown(value)} has the wrong type: expected {_type_name(tp)}")


def _unknown_key(key: str, known: Sequence[str]) -> ConfigError:
    section, _, name = key.rpartition(".")
    close = difflib.get_close_matches(name[:100], known, n=1)  # difflib is quadratic: a long name is no typo
    hint = f" (did you mean {(section + '.' if section else '') + close[0]}?)" if close else ""
    return ConfigError(f"unknown config key {shown(key)}{hint}; known keys here: {', '.join(sorted(known))}")


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        where = prefix.rstrip(".") or "the config"
        raise ConfigError(f"{where} must be a mapping of keys to values, got {shown(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str) or key not in names:
            raise _unknown_key(prefix + str(key), names)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, prefix + key + ".")
        else:
            kwargs[key] = _coerce(prefix + key, value, tp)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a dataclass refusing arguments is a config problem, say so plainly
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {cut(str(exc))}") from None


def config_from_dict(data: Mapping[str, Any] | None) -> Config:
    """Build and validate a Config from nested plain data (what YAML gives)."""
    return _build(Config, data or {}, "")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into its key path and a YAML-parsed value."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {shown(text)} must look like section.key=value, e.g. topology.nodes=8")
    try:
        value = load_yaml_text(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        if _is_limit(exc):
            raise ConfigError(f"override {shown(text)}: the value cannot be read: {_yaml_problem(exc)}") from None
        value = raw  # not YAML: the text itself (a string value)
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply dotted overrides to nested plain data, rejecting keys the schema does not have."""
    data = dict(data)
    for text in overrides:
        path, value = parse_override(text)
        _check_path(path)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, Mapping) else {}
            node[part] = child
            node = child
        node[path[-1]] = value
    return data


def _check_path(path: list[str]) -> None:
    cls: Any = Config
    for depth, part in enumerate(path):
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"unknown config key {shown('.'.join(path))}: {'.'.join(path[:depth])} is not a section")
        hints = typing.get_type_hints(cls)
        if part not in hints:
            raise _unknown_key(".".join(path[: depth + 1]), list(hints))
        cls = hints[part]
    if dataclasses.is_dataclass(cls):
        raise ConfigError(f"{'.'.join(path)} is a section; set one of its keys, e.g. {'.'.join(path)}."
                          f"{dataclasses.fields(cls)[0].name}=...")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line report as one short line: what is wrong and where (line and column, 1-based)."""
    return cut(_yaml_report(exc), 300)


def _yaml_report(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.reader.ReaderError):
        character = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        return f"{exc.reason} (character {character} at offset {exc.position})"
    mark = getattr(exc, "problem_mark", None)
    what = "; ".join(str(part) for part in (getattr(exc, "context", None), getattr(exc, "problem", None)) if part)
    if mark is not None and what:
        return f"{what} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())


def _is_limit(exc: yaml.YAMLError) -> bool:
    problem = str(getattr(exc, "problem", "") or "")
    return problem.startswith(("it holds more than", "it is nested deeper", "its aliases expand",
                               "an alias refers to", "an integer of"))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's top-level mapping; a missing, oversized, unreadable or unsafe file is a ConfigError."""
    path = Path(path)
    name = shown(str(path))
    if not path.exists():
        raise ConfigError(f"config file {name} does not exist; give the path of a YAML file, "
                          "e.g. configs/quickstart.yaml")
    if not path.is_file():
        raise ConfigError(f"config file {name} is not a regular file; give the path of a YAML file, "
                          "e.g. configs/quickstart.yaml")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"config file {name} cannot be read ({exc.strerror or type(exc).__name__}); "
                          "check its permissions") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {name} is larger than {MAX_CONFIG_BYTES:,} bytes: a qtd config is a "
                          "few kilobytes of YAML; put long lists (a graph's edges) in their own file "
                          "(topology.kind=file, topology.path)")
    try:
        data = load_yaml_text(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {name} is not a UTF-8 text file; give a YAML config") from None
    except yaml.YAMLError as exc:
        what = "cannot be read safely" if _is_limit(exc) else "is not valid YAML"
        raise ConfigError(f"config file {name} {what}: {_yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {name} must hold a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    data = read_yaml(path) if path is not None else {}
    return config_from_dict(apply_overrides(data, overrides))


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain nested data (tuples as lists), ready for YAML or JSON."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    return plain(config)


def dump_config(config: Config) -> str:
    """The resolved config as YAML that :func:`load_config` reads back to an equal Config."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(dump_config(config))
