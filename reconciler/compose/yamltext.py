"""A spec written as YAML text with comments among its keys (PyYAML's
emitter writes no comments): the blocks the converter builds, and their lines."""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field

import yaml

COMMENT_WIDTH = 96


@dataclass(frozen=True)
class _Comment:
    text: str


@dataclass
class _Block:
    """A YAML mapping being written: entries in order, comments among them."""

    items: list[tuple[str, object] | _Comment] = field(default_factory=list)

    def set(self, key: str, value: object) -> None:
        self.items.append((key, value))

    def note(self, text: str) -> None:
        self.items.append(_Comment(text))

    def has_keys(self) -> bool:
        return any(not isinstance(item, _Comment) for item in self.items)

    def has(self, key: str) -> bool:
        return any(isinstance(item, tuple) and item[0] == key for item in self.items)

    def comments(self) -> list[_Comment]:
        return [item for item in self.items if isinstance(item, _Comment)]


PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./+-]*")
# Characters YAML reads as line breaks, and anything not printable: escaped
# in comments, so that no value from the Compose file can end a comment.
UNSAFE = re.compile(r"[^\x20-\x7e\u00a0-\u2027\u202a-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if PLAIN.fullmatch(text) and yaml.safe_load(text) == text:
        return text
    return json.dumps(text)  # a double-quoted YAML scalar


def _text(value: object) -> str:
    """A Compose value in a comment or a message: booleans as YAML writes them."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _comment_lines(text: str, pad: str) -> Iterator[str]:
    clean = UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    lines = textwrap.wrap(clean, COMMENT_WIDTH - len(pad), break_on_hyphens=False,
                          break_long_words=False, subsequent_indent="  ")
    for line in lines or [""]:
        yield f"{pad}# {line}"


def _lines(block: _Block, indent: int) -> Iterator[str]:
    pad = " " * indent
    for item in block.items:
        if isinstance(item, _Comment):
            yield from _comment_lines(item.text, pad)
            continue
        key, value = item
        if isinstance(value, _Block):
            if value.has_keys():
                yield f"{pad}{key}:"
                yield from _lines(value, indent + 2)
            else:
                yield from _lines(_Block(list(value.comments())), indent)
                yield f"{pad}{key}: {{}}"
        elif isinstance(value, list) and key == "ports":
            yield f"{pad}{key}:"
            yield from (f"{pad}  - {_scalar(v)}" for v in value)
        elif isinstance(value, list):
            yield f"{pad}{key}: [{', '.join(_scalar(v) for v in value)}]"
        elif isinstance(value, dict):
            inner = ", ".join(f"{_scalar(k)}: {_scalar(v)}" for k, v in value.items())
            yield f"{pad}{key}: {{{inner}}}"
        else:
            yield f"{pad}{key}: {_scalar(value)}"
