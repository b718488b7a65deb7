"""Reading a config file: missing, a folder, unreadable, not UTF-8 text, not YAML, or a key
given twice are each one ConfigError naming the file, the line and column, and what a
config is (bpttbench.config validates what is read)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config (a file, the JSON a job is given, or a key's value) the suite cannot use."""


#: What a config is, for the errors about files that are not one.
WHAT_A_CONFIG_IS = ("a config is a YAML mapping of keys (dtype, device, gradient_flow: ...; "
                    "see config/config.yaml and workflow/schemas/config.schema.yaml)")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key repeated in one mapping (PyYAML keeps the last
    silently: a second ``gradient_flow:`` section would replace the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` may legitimately be overridden by explicit keys
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: the base class names it
            line = key_node.start_mark.line
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} appears twice in one mapping (line "
                    f"{first + 1} and line {line + 1}); each key may be given once",
                    key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, where: str) -> Any:
    """The YAML ``text`` of ``where`` (a file name), read with duplicate keys refused;
    ConfigError names ``where``, the line and column, and the problem."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        if "appears twice" in what:
            raise ConfigError(f"{where}: {at}{what}") from None
        raise ConfigError(f"{where} is not valid YAML: {at}{what}; {WHAT_A_CONFIG_IS}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}; {WHAT_A_CONFIG_IS}") from None


def read_config_file(path: str | Path) -> Any:
    """The parsed content of a config file (not validated): ConfigError, naming the file,
    when it is missing, a folder, unreadable, not UTF-8 text or not valid YAML."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} not found; {WHAT_A_CONFIG_IS}")
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder, not a file; {WHAT_A_CONFIG_IS}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(
            f"config file {path} is not a text file: byte 0x{data[exc.start]:02x} (line {line}) "
            f"is not UTF-8; {WHAT_A_CONFIG_IS}") from None
    return parse_yaml(text, f"config file {path}")
