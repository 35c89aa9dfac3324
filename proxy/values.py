"""Decoding Bind parameter values (text or binary format) into Python values."""

from __future__ import annotations

import datetime as dt
import struct
from typing import Any

_POSTGRES_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_TEXT_OIDS = {25, 1043, 19, 0, 705}  # text, varchar, name, unknown/unspecified


def decode_param(value: bytes | None, fmt: int, oid: int) -> Any:
    """One parameter's value; raises ValueError for a format the proxy can't decode."""
    try:
        return _decode(value, fmt, oid)
    except struct.error as exc:
        raise ValueError(f"malformed binary value for a parameter of type oid {oid}") from exc


def _decode(value: bytes | None, fmt: int, oid: int) -> Any:
    if value is None:
        return None
    if fmt == 0 and oid == 1009:
        return parse_text_array(_text(value))
    if fmt == 0 or oid in _TEXT_OIDS:
        return _text(value)
    if oid == 16:
        return value == b"\x01"
    if oid in (20, 21, 23):
        return int.from_bytes(value, "big", signed=True)
    if oid in (1114, 1184):
        micros = struct.unpack("!q", value)[0]
        return _POSTGRES_EPOCH + dt.timedelta(microseconds=micros)
    if oid in (114, 3802):
        return _text(value[1:] if oid == 3802 else value)
    if oid == 1009:
        return _text_array(value)
    raise ValueError(f"cannot decode a binary parameter of type oid {oid}")


def _text(value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise ValueError("parameter is not valid UTF-8") from exc


def _text_array(value: bytes) -> list[str | None]:
    """The binary array format, one dimension: ndim, flags, element oid, (size, lbound), items."""
    ndim, _flags, _oid = struct.unpack_from("!iii", value)
    if ndim == 0:
        return []
    if ndim != 1:
        raise ValueError("only one-dimensional text arrays are supported")
    count = struct.unpack_from("!i", value, 12)[0]
    pos = 20
    items: list[str | None] = []
    for _ in range(count):
        size = struct.unpack_from("!i", value, pos)[0]
        pos += 4
        if size < 0:
            items.append(None)
            continue
        if pos + size > len(value):
            raise ValueError("a binary text[] parameter is cut short")
        items.append(_text(value[pos : pos + size]))
        pos += size
    return items


def parse_text_array(text: str) -> list[str | None]:
    """A one-dimensional array in Postgres's text form ('{a,"b c",NULL}') as a list: elements
    may be double-quoted (backslash escapes the next character); an unquoted NULL is None."""
    body = text.strip()
    if not (body.startswith("{") and body.endswith("}")):
        raise ValueError(f"malformed array literal: {text[:80]!r}")
    items: list[str | None] = []
    pos, end = 1, len(body) - 1
    if not body[pos:end].strip():
        return items
    while True:
        while pos < end and body[pos].isspace():
            pos += 1
        if pos < end and body[pos] == '"':
            pos += 1
            chars: list[str] = []
            while pos < end and body[pos] != '"':
                if body[pos] == "\\" and pos + 1 < end:
                    pos += 1
                chars.append(body[pos])
                pos += 1
            if pos >= end:
                raise ValueError(f"malformed array literal: {text[:80]!r}")
            pos += 1
            item: str | None = "".join(chars)
        else:
            start = pos
            while pos < end and body[pos] != ",":
                if body[pos] in '{}"\\':
                    raise ValueError(f"only one-dimensional arrays are supported: {text[:80]!r}")
                pos += 1
            word = body[start:pos].strip()
            if not word:
                raise ValueError(f"malformed array literal: {text[:80]!r}")
            item = None if word.upper() == "NULL" else word
        items.append(item)
        while pos < end and body[pos].isspace():
            pos += 1
        if pos == end:
            return items
        if body[pos] != ",":
            raise ValueError(f"malformed array literal: {text[:80]!r}")
        pos += 1
