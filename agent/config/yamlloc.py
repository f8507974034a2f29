"""YAML loading that remembers where every key came from, so errors read ``FILE:LINE: key.path: message``.

Hostile or broken input is refused early, in bounded time and memory, with the best location there is:
files larger than ``MAX_FILE_BYTES`` are refused before they are read, non-UTF-8 bytes and NUL bytes are
located by line and column, nesting deeper than ``MAX_DEPTH`` and documents whose aliases expand to more than
``MAX_NODES`` values ("billion laughs") are refused while parsing, before anything is built.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from agent.errors import ConfigError, Problem

Loc = tuple[str | int, ...]

MAX_FILE_BYTES = 1024 * 1024  # site files and profiles; documented in docs/profiles.md
MAX_DEPTH = 32  # nested mappings/sequences; real files use fewer than 8
MAX_NODES = 100_000  # values in the document once every alias is expanded (a 2000-device site: ~40,000)
MAX_PROBLEMS = 100  # duplicate keys listed per file
MAX_MESSAGE = 500  # characters of one problem message
MAX_NUMBER_DIGITS = 1000  # a plain scalar this long made of digits is refused (Python refuses > 4300 anyway)

_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_NUMBERISH = re.compile(r"^[-+]?[0-9_.,eE]+$")


class LocatedDoc:
    """A parsed YAML document and the line (1-based) of each key path in it.

    ``blank`` says why ``data`` is None when the file holds no document ("empty", "only comments").
    """

    def __init__(self, file: str, data: Any, lines: dict[Loc, int], blank: str | None = None) -> None:
        self.file = file
        self.data = data
        self.lines = lines
        self.blank = blank

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
        if len(message) > MAX_MESSAGE:  # a message may quote what the file holds: never echo a huge value
            message = message[:MAX_MESSAGE - 3] + "..."
        return Problem(self.file, self.line_of(path), dotted(path), message)

    def not_a_mapping(self, what: str) -> Problem:
        """The problem of a document that is not a mapping: empty, only comments, or another type."""
        if self.blank:
            return Problem(self.file, 1, "", f"the file is {self.blank}: {what}")
        kind = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean",
                type(None): "null"}.get(
            type(self.data), type(self.data).__name__)
        return self.problem((), f"the file holds {kind}, not a mapping: {what}")


def dotted(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = str(part)
            out += ("." if out else "") + (key if len(key) <= 64 else key[:61] + "...")
    return out


def clip(value: object, limit: int = 60) -> str:
    """``repr`` of a value from a file, shortened for a message."""
    r = repr(value)
    return r if len(r) <= limit else r[:limit - 3] + "..."


def _where(text: str | bytes, index: int) -> tuple[int, int]:
    """(line, column), both 1-based, of a character or byte index."""
    nl = "\n" if isinstance(text, str) else b"\n"
    line = text.count(nl, 0, index) + 1  # type: ignore[arg-type]
    start = text.rfind(nl, 0, index) + 1  # type: ignore[arg-type]
    return line, index - start + 1


def _precheck(text: str, file: str) -> None:
    """Walk the event stream (no tree is built) and refuse deep nesting, alias bombs and absurd numbers."""
    depth = 0
    total = 0
    sizes: dict[str, int] = {}
    open_: list[tuple[str | None, int]] = []  # (anchor, expanded count so far) of each open collection
    try:
        for ev in yaml.parse(text, Loader=_Loader):
            line = ev.start_mark.line + 1 if ev.start_mark else None
            if isinstance(ev, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise ConfigError(Problem(file, line, "", f"nested deeper than {MAX_DEPTH} levels"))
                open_.append((ev.anchor, total))
                total += 1
            elif isinstance(ev, yaml.CollectionEndEvent):
                depth -= 1
                anchor, before = open_.pop()
                if anchor is not None:
                    sizes[anchor] = total - before
            elif isinstance(ev, yaml.ScalarEvent):
                total += 1
                if ev.anchor is not None:
                    sizes[ev.anchor] = 1
                v = ev.value
                if not ev.style and len(v) > MAX_NUMBER_DIGITS and _NUMBERISH.match(v):
                    raise ConfigError(Problem(file, line, "", f"a number with {len(v)} characters"))
            elif isinstance(ev, yaml.AliasEvent):
                if any(anchor == ev.anchor for anchor, _ in open_):
                    raise ConfigError(Problem(file, line, "", f"recursive alias *{ev.anchor} inside &{ev.anchor}: "
                                              "a value cannot contain itself"))
                total += sizes.get(ev.anchor or "", 1)
            else:
                continue
            if total > MAX_NODES:
                what = "aliases expand" if isinstance(ev, yaml.AliasEvent) else "the document expands"
                raise ConfigError(Problem(file, line, "", f"{what} to more than {MAX_NODES} values "
                                          "(refused: an alias bomb or a file far too large)"))
    except yaml.YAMLError:
        return  # reported with its location by the full parse


def _walk(node: yaml.Node, path: Loc, lines: dict[Loc, int], file: str, problems: list[Problem]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.start_mark)
            line = key_node.start_mark.line + 1
            if key in seen and len(problems) < MAX_PROBLEMS:
                problems.append(
                    Problem(file, line, dotted((*path, key)), f"duplicate key (first at line {seen[key]})")
                )
            seen.setdefault(key, line)
            lines[(*path, key)] = line
            _walk(value_node, (*path, key), lines, file, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), lines, file, problems)
    elif isinstance(node, yaml.ScalarNode) and "\x00" in node.value:
        problems.append(Problem(file, node.start_mark.line + 1, dotted(path), "NUL character in a value"))


def _syntax_error(exc: yaml.YAMLError, text: str, file: str) -> ConfigError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        msg = exc.problem or "invalid YAML"
        if exc.context:
            ctx_line = exc.context_mark.line + 1 if exc.context_mark else None
            msg += f" ({exc.context}{f' at line {ctx_line}' if ctx_line and ctx_line != line else ''})"
        what = "YAML error" if isinstance(exc, yaml.constructor.ConstructorError) else "YAML syntax error"
        return ConfigError(Problem(file, line, "", f"{what}: {msg}"))
    if isinstance(exc, yaml.reader.ReaderError):
        line, col = _where(text, min(max(exc.position, 0), len(text)))
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        return ConfigError(Problem(file, line, "", f"YAML error: column {col}: character {char!r} "
                                   "(U+{:04X}) is not allowed in YAML".format(ord(char))))
    return ConfigError(Problem(file, None, "", f"YAML error: {exc}"))


def load_text(text: str, file: str) -> LocatedDoc:
    """Parse YAML text; raise ConfigError with the line of a syntax error or duplicate key."""
    if not text.strip():
        return LocatedDoc(file, None, {(): 1}, "empty")
    _precheck(text, file)
    loader = _Loader(text)
    node = None
    try:
        node = loader.get_single_node()
        lines: dict[Loc, int] = {}
        problems: list[Problem] = []
        if node is None:
            blank = "empty" if not text.strip() else "only comments" if _only_comments(text) else "empty"
            return LocatedDoc(file, None, {(): 1}, blank)
        _walk(node, (), lines, file, problems)
        if problems:
            raise ConfigError(problems)
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, text, file) from None
    except (ValueError, OverflowError, RecursionError) as exc:  # a value Python cannot represent
        line = _failing_scalar_line(loader, node) if node is not None else None
        raise ConfigError(Problem(file, line, "", f"YAML value cannot be read: {str(exc)[:200]}")) from None
    finally:
        loader.dispose()
    return LocatedDoc(file, data, lines)


def _failing_scalar_line(loader: Any, root: yaml.Node) -> int | None:
    """Line of the first scalar Python cannot build (a date out of range, a float overflow...)."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.ScalarNode):
            try:
                loader.construct_object(node)
            except (ValueError, OverflowError, yaml.YAMLError):
                return int(node.start_mark.line) + 1
        elif isinstance(node, yaml.MappingNode):
            stack.extend(v for pair in reversed(node.value) for v in reversed(pair))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value))
    return None


def _only_comments(text: str) -> bool:
    return all(not ln.strip() or ln.lstrip().startswith("#") or ln.strip() in ("---", "...")
               for ln in text.splitlines())


def decode(raw: bytes, file: str) -> str:
    """UTF-8 text of a file, or a located ConfigError saying what is wrong with its bytes."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(Problem(file, 1, "", "the file is UTF-16 or UTF-32 (byte order mark): save it as UTF-8"))
    nul = raw.find(b"\x00")
    if nul >= 0:
        line, col = _where(raw, nul)
        raise ConfigError(Problem(file, line, "", f"NUL byte at column {col}: not a text file (or UTF-16/32); "
                                  "save it as UTF-8"))
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, col = _where(raw, exc.start)
        raise ConfigError(Problem(file, line, "", f"not UTF-8: byte 0x{raw[exc.start]:02X} at column {col} "
                                  "(save the file as UTF-8)")) from None


def read_limited(p: Path) -> bytes:
    """The bytes of a regular file, refused without reading it when it is larger than MAX_FILE_BYTES.
    A FIFO, a device or a directory is refused without blocking on it."""
    where = str(p)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise ConfigError(Problem(where, None, "", "file not found")) from exc
    except OSError as exc:
        raise ConfigError(Problem(where, None, "", f"cannot read: {exc.strerror or exc}")) from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        what = "is a directory, not a file" if stat.S_ISDIR(st.st_mode) else "not a regular file (a FIFO or device?)"
        raise ConfigError(Problem(where, None, "", what))
    with os.fdopen(fd, "rb") as f:
        too_large = f"file too large: {{}} bytes, the limit is {MAX_FILE_BYTES} bytes (1 MiB)"
        if st.st_size > MAX_FILE_BYTES:
            raise ConfigError(Problem(where, None, "", too_large.format(st.st_size)))
        try:
            raw = f.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise ConfigError(Problem(where, None, "", f"cannot read: {exc.strerror or exc}")) from exc
        if len(raw) > MAX_FILE_BYTES:  # it grew while being read
            raise ConfigError(Problem(where, None, "", too_large.format(f"more than {MAX_FILE_BYTES}")))
    return raw


def load_file(path: str | Path) -> LocatedDoc:
    p = Path(path)
    return load_text(decode(read_limited(p), str(p)), str(p))
