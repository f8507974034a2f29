"""YAML loading that remembers where every key came from, so errors read ``FILE:LINE: key.path: message``."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from agent.errors import ConfigError, Problem

Loc = tuple[str | int, ...]


class LocatedDoc:
    """A parsed YAML document and the line (1-based) of each key path in it."""

    def __init__(self, file: str, data: Any, lines: dict[Loc, int]) -> None:
        self.file = file
        self.data = data
        self.lines = lines

    def line_of(self, loc: Iterable[str | int]) -> int | None:
        """Line of the deepest known prefix of ``loc`` (pydantic locations may go deeper than YAML keys)."""
        path = tuple(loc)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), None)

    def problem(self, loc: Iterable[str | int], message: str) -> Problem:
        path = tuple(loc)
        return Problem(self.file, self.line_of(path), dotted(path), message)


def dotted(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _walk(node: yaml.Node, path: Loc, lines: dict[Loc, int], file: str, problems: list[Problem]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.start_mark)
            line = key_node.start_mark.line + 1
            if key in seen:
                problems.append(
                    Problem(file, line, dotted((*path, key)), f"duplicate key (first at line {seen[key]})")
                )
            seen[key] = line
            lines[(*path, key)] = line
            _walk(value_node, (*path, key), lines, file, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), lines, file, problems)


def load_text(text: str, file: str) -> LocatedDoc:
    """Parse YAML text; raise ConfigError with the line of a syntax error or duplicate key."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        msg = exc.problem or "invalid YAML"
        if exc.context:
            ctx_line = exc.context_mark.line + 1 if exc.context_mark else None
            msg += f" ({exc.context}{f' at line {ctx_line}' if ctx_line and ctx_line != line else ''})"
        raise ConfigError(Problem(file, line, "", f"YAML syntax error: {msg}")) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(Problem(file, None, "", f"YAML error: {exc}")) from exc
    lines: dict[Loc, int] = {}
    problems: list[Problem] = []
    if node is not None:
        _walk(node, (), lines, file, problems)
    if problems:
        raise ConfigError(problems)
    return LocatedDoc(file, data, lines)


def load_file(path: str | Path) -> LocatedDoc:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(Problem(str(p), None, "", "file not found")) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(Problem(str(p), None, "", f"cannot read: {exc}")) from exc
    return load_text(text, str(p))
