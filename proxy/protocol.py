"""Postgres protocol v3 messages as pure functions: no sockets, no state.

Only the few messages the proxy looks inside or writes itself are decoded here; everything
else is relayed as the bytes it arrived as.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PROTOCOL_V3 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
MAX_STARTUP_LENGTH = 10_000  # Postgres's own limit for the startup packet

# Message type bytes a client may send once started (protocol v3, section 55.7).
FRONTEND_TYPES = frozenset(b"BCdcfDEHFPpQSX")

_I32 = struct.Struct("!i")
_I16 = struct.Struct("!h")


class ProtocolViolation(Exception):
    """The peer sent bytes that are not valid protocol: the connection must end (08P01)."""


# --- encoding -------------------------------------------------------------------------------


def message(kind: bytes, body: bytes) -> bytes:
    return kind + _I32.pack(len(body) + 4) + body


def message_of(kind: bytes, parts: list[bytes | memoryview]) -> bytes:
    """A message whose body is `parts` joined: one copy, however large (views of a client's
    message among them)."""
    return b"".join([kind, _I32.pack(sum(map(len, parts)) + 4), *parts])


def cstring(text: str) -> bytes:
    return text.encode() + b"\x00"


def ready_for_query(status: bytes) -> bytes:
    return message(b"Z", status)


def _fields(severity: str, code: str, text: str, detail: str | None, hint: str | None) -> bytes:
    parts = [b"S", cstring(severity), b"V", cstring(severity), b"C", cstring(code)]
    parts += [b"M", cstring(text)]
    if detail:
        parts += [b"D", cstring(detail)]
    if hint:
        parts += [b"H", cstring(hint)]
    return b"".join(parts) + b"\x00"


def error_response(
    code: str, text: str, *, detail: str | None = None, hint: str | None = None, fatal: bool = False
) -> bytes:
    return message(b"E", _fields("FATAL" if fatal else "ERROR", code, text, detail, hint))


def notice_response(text: str, *, detail: str | None = None) -> bytes:
    return message(b"N", _fields("NOTICE", "00000", text, detail, None))


def query(sql: str) -> bytes:
    return message_of(b"Q", [sql.encode(), b"\x00"])


def query_of(sql: list[bytes | memoryview]) -> bytes:
    """A Query of SQL text in UTF-8 parts."""
    return message_of(b"Q", [*sql, b"\x00"])


def parse(name: str, sql: str, param_types: list[int]) -> bytes:
    return parse_of(name, [sql.encode()], param_types)


def parse_of(name: str, sql: list[bytes | memoryview], param_types: list[int]) -> bytes:
    """A Parse of SQL text in UTF-8 parts."""
    types = b"".join(_I32.pack(oid) for oid in param_types)
    tail = b"\x00" + _I16.pack(len(param_types)) + types
    return message_of(b"P", [cstring(name), *sql, tail])


def parameter_description(param_types: list[int]) -> bytes:
    return message(b"t", _I16.pack(len(param_types)) + b"".join(_I32.pack(t) for t in param_types))


# --- decoding -------------------------------------------------------------------------------


class Reader:
    """Reads fields from one message body, raising ProtocolViolation on short or bad data."""

    def __init__(self, body: bytes | memoryview) -> None:
        self.body = bytes(body)
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.body):
            raise ProtocolViolation("message ends too early")
        chunk = self.body[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int16(self) -> int:
        return int(_I16.unpack(self._take(2))[0])

    def int32(self) -> int:
        return int(_I32.unpack(self._take(4))[0])

    def byte(self) -> bytes:
        return self._take(1)

    def cstring(self) -> str:
        end = self.body.find(b"\x00", self.pos)
        if end < 0:
            raise ProtocolViolation("string is not terminated")
        raw = self.body[self.pos : end]
        self.pos = end + 1
        try:
            return raw.decode()
        except UnicodeDecodeError as exc:
            raise ProtocolViolation("string is not valid UTF-8") from exc

    def value(self) -> bytes | None:
        """A length-prefixed value where -1 means NULL."""
        n = self.int32()
        return None if n == -1 else self._take(n)

    def rest(self) -> bytes:
        return self._take(len(self.body) - self.pos)

    def end(self) -> None:
        if self.pos != len(self.body):
            raise ProtocolViolation("message has trailing bytes")


def decode_query(body: bytes) -> str:
    reader = Reader(body)
    sql = reader.cstring()
    reader.end()
    return sql


def query_text(data: bytes, start: int, end: int) -> int:
    """Where the SQL text of the Query body data[start:end] ends (its NUL), checked as
    decode_query checks it, without copying the text: it may be a hundred megabytes."""
    nul = data.find(b"\x00", start, end)
    if nul < 0:
        raise ProtocolViolation("string is not terminated")
    if nul != end - 1:
        raise ProtocolViolation("message has trailing bytes")
    return nul


@dataclass
class Parse:
    name: str
    sql: str
    param_types: list[int]

    def encode(self) -> bytes:
        return parse(self.name, self.sql, self.param_types)


def decode_parse(body: bytes) -> Parse:
    reader = Reader(body)
    name, sql = reader.cstring(), reader.cstring()
    count = reader.int16()
    if count < 0:
        raise ProtocolViolation("negative parameter count")
    types = [reader.int32() for _ in range(count)]
    reader.end()
    return Parse(name, sql, types)


def parse_fields(data: bytes, start: int, end: int) -> tuple[str, int, int, list[int]]:
    """The Parse body data[start:end] as decode_parse reads it, but with the SQL text left in
    place: (name, where the text starts, where it ends, parameter types). The caller decodes
    the text (as UTF-8)."""
    name_end = data.find(b"\x00", start, end)
    sql_end = data.find(b"\x00", name_end + 1, end) if name_end >= 0 else -1
    if sql_end < 0:
        raise ProtocolViolation("string is not terminated")
    reader = Reader(data[sql_end + 1 : end])
    count = reader.int16()
    if count < 0:
        raise ProtocolViolation("negative parameter count")
    types = [reader.int32() for _ in range(count)]
    reader.end()
    try:
        name = data[start:name_end].decode()
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("string is not valid UTF-8") from exc
    return name, name_end + 1, sql_end, types


@dataclass
class Bind:
    portal: str
    statement: str
    param_formats: list[int]
    values: list[bytes | None]
    result_formats: list[int]

    def format_of(self, index: int) -> int:
        """The format code (0 text, 1 binary) of parameter `index`, as the protocol defines it."""
        if not self.param_formats:
            return 0
        if len(self.param_formats) == 1:
            return self.param_formats[0]
        return self.param_formats[index]

    def encode(self) -> bytes:
        parts = [cstring(self.portal), cstring(self.statement)]
        parts.append(_I16.pack(len(self.param_formats)))
        parts += [_I16.pack(f) for f in self.param_formats]
        parts.append(_I16.pack(len(self.values)))
        for value in self.values:
            parts.append(_I32.pack(-1) if value is None else _I32.pack(len(value)) + value)
        parts.append(_I16.pack(len(self.result_formats)))
        parts += [_I16.pack(f) for f in self.result_formats]
        return message(b"B", b"".join(parts))


def decode_bind(body: bytes) -> Bind:
    reader = Reader(body)
    portal, statement = reader.cstring(), reader.cstring()
    formats = [reader.int16() for _ in range(_count(reader))]
    values = [reader.value() for _ in range(_count(reader))]
    results = [reader.int16() for _ in range(_count(reader))]
    reader.end()
    if len(formats) not in (0, 1, len(values)):
        raise ProtocolViolation("parameter format count does not match the parameter count")
    return Bind(portal, statement, formats, values, results)


def _count(reader: Reader) -> int:
    count = reader.int16()
    if count < 0:
        raise ProtocolViolation("negative count")
    return count


def decode_target(body: bytes) -> tuple[bytes, str]:
    """Describe and Close: ('S' or 'P', name)."""
    reader = Reader(body)
    kind = reader.byte()
    name = reader.cstring()
    reader.end()
    if kind not in (b"S", b"P"):
        raise ProtocolViolation("Describe/Close must name a statement or a portal")
    return kind, name


def decode_parameter_description(body: bytes) -> list[int]:
    reader = Reader(body)
    return [reader.int32() for _ in range(_count(reader))]


def decode_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse / NoticeResponse fields by their one-letter code."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(body) and body[pos] != 0:
        end = body.find(b"\x00", pos + 1)
        if end < 0:
            break
        fields[chr(body[pos])] = body[pos + 1 : end].decode(errors="replace")
        pos = end + 1
    return fields


def decode_startup(packet: bytes) -> dict[str, str]:
    """The key/value pairs of a v3 StartupMessage (packet without its length word)."""
    reader = Reader(packet)
    if reader.int32() != PROTOCOL_V3:
        raise ProtocolViolation("unsupported frontend protocol")
    params: dict[str, str] = {}
    while True:
        key = reader.cstring()
        if not key:
            break
        params[key] = reader.cstring()
    reader.end()
    return params


# --- authentication (the proxy's own SCRAM exchange: proxy/login.py) ------------------------

# Authentication request codes ('R' messages)
AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12


def authentication(code: int, data: bytes = b"") -> bytes:
    """An Authentication* message ('R'): its code, then the code's data."""
    return message(b"R", _I32.pack(code) + data)


def authentication_sasl(mechanisms: list[str]) -> bytes:
    return authentication(AUTH_SASL, b"".join(cstring(m) for m in mechanisms) + b"\x00")


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return message(b"p", cstring(mechanism) + _I32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return message(b"p", data)


def decode_sasl_initial_response(body: bytes) -> tuple[str, bytes]:
    """(mechanism, initial client response) of a SASLInitialResponse body."""
    reader = Reader(body)
    mechanism = reader.cstring()
    data = reader.value()
    reader.end()
    return mechanism, data or b""


def decode_sasl_mechanisms(data: bytes) -> list[str]:
    """The mechanism names of an AuthenticationSASL message's data."""
    reader = Reader(data)
    names = []
    while (name := reader.cstring()) != "":
        names.append(name)
    return names


def negotiate_protocol_version(minor: int, options: list[str]) -> bytes:
    """NegotiateProtocolVersion: the newest minor version of 3 served, and the `_pq_.`
    options of the startup packet that are not recognized."""
    names = b"".join(cstring(o) for o in options)
    return message(b"v", _I32.pack(minor) + _I32.pack(len(options)) + names)


def startup_message(params: dict[str, str]) -> bytes:
    """A v3.0 StartupMessage, its length word included."""
    body = _I32.pack(PROTOCOL_V3) + b"".join(cstring(k) + cstring(v) for k, v in params.items())
    body += b"\x00"
    return _I32.pack(len(body) + 4) + body
