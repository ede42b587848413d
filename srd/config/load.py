"""`load_config`: a config file → a `Config`, its YAML read strictly (a key given twice is a problem)."""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

from srd.config.parse import parse_config
from srd.config.schema import Config
from srd.errors import ConfigError


class _DuplicateKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, noting every mapping key given twice (plain YAML keeps the last one silently)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[int, str]] = []  # (line, problem): nested mappings are built first

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        first_seen: dict[Hashable, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` brings in keys that this mapping may override on purpose
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # the base constructor reports an unhashable key
            first = first_seen.setdefault(key, key_node)
            if first is not key_node:
                line = key_node.start_mark.line + 1
                shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else key  # as written
                self.duplicates.append((line, f"line {line}: key {shown!r} is given again (first at line "
                                              f"{first.start_mark.line + 1}); YAML would keep only the last one, "
                                              "so remove one of them"))
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, source: str) -> tuple[Any, list[str]]:
    """The YAML document in `text` and its duplicate-key problems.

    Raises:
        ConfigError: a YAML syntax error, with its line and column.
    """
    loader = _DuplicateKeyLoader(text)
    try:
        data = loader.get_single_data()
        return data, [problem for _, problem in sorted(loader.duplicates)]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError([f"{where}invalid YAML ({getattr(exc, 'problem', exc)})"], source) from exc
    finally:
        loader.dispose()


def load_config(path: Path | None, *, check_models: bool = False, check_folders: bool = True) -> Config:
    """Read and validate `path`; with None, the working default (./inbox → ./outbox, state in ./.srd).

    `check_models` and `check_folders`: see `parse_config`.

    Raises:
        ConfigError: unreadable file, YAML syntax error, or any invalid setting (all listed).
    """
    if path is None:
        return parse_config({}, base=Path.cwd(), source="defaults", check_models=check_models,
                            check_folders=check_folders)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror}"], str(path)) from exc
    except UnicodeDecodeError as exc:  # an editor saved it as Latin-1, say: a problem to report, not a crash
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError([f"line {line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); save the file as "
                           "UTF-8"], str(path)) from exc
    data, duplicates = _parse_yaml(text, str(path))
    try:
        config = parse_config(data, base=path.resolve().parent, source=str(path), check_models=check_models,
                              check_folders=check_folders)
    except ConfigError as exc:  # every problem at once: the duplicates first, in file order
        raise ConfigError([*duplicates, *exc.problems], exc.source) from exc
    if duplicates:
        raise ConfigError(duplicates, str(path))
    return config
