"""Long string literals kept away from the SQL parser.

pglast copies the text it parses several times over (UTF-8 buffers, the scanner's buffer, the
literal's own buffer, the parse tree's Python string), and so do the rewrite and the encoding:
a statement holding a 100 MB literal cost about 700 MB. So the text of a large statement is
scanned for string literals first (SQL's own lexing rules: comments, quoted identifiers,
E'' strings, dollar quotes, strings continued across lines), each long literal is replaced by
a short placeholder literal, and only that reduced text is parsed and rewritten. Encoding the
rewritten SQL puts each literal's original bytes back in place of its placeholder, taken
straight from the client's message: a literal is checked as UTF-8 a chunk at a time, never
decoded whole, and copied once, into the message that goes to Postgres.
"""

from __future__ import annotations

import codecs
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.intercept import Statement

STRIP_FROM = 64 * 1024  # bytes: shorter statements are parsed as they are
LONG_LITERAL = 1024  # bytes: a literal this long or longer is replaced by a placeholder
_CHECK_CHUNK = 1 << 20  # a replaced literal's UTF-8 is checked this many bytes at a time

Part = bytes | memoryview

_TOKEN = re.compile(
    rb"--[^\n\r]*+"  # a comment to the end of the line
    rb"|/\*"  # a block comment; they nest, so their end is found in code
    rb'|"[^"]*+(?:""[^"]*+)*+(?:"|\Z)'  # a quoted identifier
    rb"|[eE]?'"  # a string (E'' when the E is not the end of a word); its body follows
    rb"|\$(?:[A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*+)?\$",  # a dollar quote's opening
    re.S,
)
# String bodies after the opening quote, up to and including the closing one (or the end of
# the text, for an unterminated string). Possessive loops: a body of millions of '' or \'
# escapes is matched in one pass, without backtracking state.
_PLAIN_BODY = re.compile(rb"[^']*+(?:''[^']*+)*+(?P<close>')?")
_ESCAPE_BODY = re.compile(rb"[^'\\]*+(?:(?:\\.|'')[^'\\]*+)*+(?P<close>')?", re.S)
# 'a'<newline>'b' is one literal, 'ab' (comments may sit in that whitespace).
_CONTINUED = re.compile(rb"(?:[ \t\f]|--[^\n\r]*+)*+[\n\r](?:[ \t\n\r\f\v]|--[^\n\r]*+[\n\r])*+'")
_COMMENT_EDGE = re.compile(rb"/\*|\*/")


@dataclass
class Literals:
    """The long literals of one message's SQL text, by placeholder number."""

    source: bytes  # the client's message
    spans: list[tuple[int, int]]  # each literal's bytes in `source`, quotes included
    text_span: tuple[int, int]  # the SQL text in `source`
    token: str  # what every placeholder starts with; it occurs nowhere in the text

    def placeholder(self, number: int) -> str:
        return f"'{self.token}{number}'"

    @property
    def _pattern(self) -> re.Pattern[str]:
        return re.compile(f"'{re.escape(self.token)}(\\d+)'")

    def numbers(self, sql: str) -> list[int]:
        """The placeholders in `sql`, in order."""
        return [int(n) for n in self._pattern.findall(sql)]

    def expand(self, sql: str) -> list[Part]:
        """`sql` (reduced text, or SQL rendered from it) as UTF-8 parts to be joined, each
        placeholder replaced by a view of its literal's original bytes."""
        pieces = self._pattern.split(sql)
        view = memoryview(self.source)
        parts: list[Part] = []
        for index, piece in enumerate(pieces):
            if index % 2:
                start, end = self.spans[int(piece)]
                parts.append(view[start:end])
            elif piece:
                parts.append(piece.encode())
        return parts

    def survive(self, statements: Sequence[Statement]) -> bool:
        """Does every rewritten statement keep its placeholders, each once, as plain literals?
        Not when a long literal is an argument of a call (the engine needs its value) or when
        the rewrite printed it some other way: the caller then parses the whole text."""
        for statement in statements:
            if statement.calls:
                rendered = statement.render_with_rows([[] for _ in statement.calls])
                if sorted(self.numbers(rendered)) != sorted(self.numbers(statement.text)):
                    return False
        return True

    def full_text(self) -> str:
        start, end = self.text_span
        return str(memoryview(self.source)[start:end], "utf-8")


def reduce(data: bytes, start: int, end: int) -> tuple[str, Literals | None]:
    """The SQL text data[start:end] (UTF-8) with its long string literals replaced by
    placeholders, and those literals; (the text as it is, None) when there are none.
    Raises UnicodeDecodeError as decoding the whole text would."""
    view = memoryview(data)
    spans = long_literals(data, start, end) if end - start >= STRIP_FROM else []
    if not spans:
        return str(view[start:end], "utf-8"), None
    token = "iasql_literal_" + secrets.token_hex(8) + "_"
    while data.find(token.encode(), start, end) >= 0:  # a 2^-64 chance, but it costs nothing
        token = "iasql_literal_" + secrets.token_hex(8) + "_"
    found = Literals(data, spans, (start, end), token)
    pieces: list[str] = []
    at = start
    for number, (first, last) in enumerate(spans):
        pieces.append(str(view[at:first], "utf-8"))
        _check_utf8(view[first:last])
        pieces.append(found.placeholder(number))
        at = last
    pieces.append(str(view[at:end], "utf-8"))
    return "".join(pieces), found


def long_literals(data: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """The spans of the string literals of data[start:end] that may be replaced: plain and E''
    strings (with their continuations) and dollar-quoted strings, LONG_LITERAL bytes or more.
    B'', X'', N'' and U&'' strings and a string right after a word (`date'...'`) are left
    alone, and so is everything after an unterminated string, identifier or comment."""
    spans: list[tuple[int, int]] = []
    pos = start
    while True:
        token = _TOKEN.search(data, pos, end)
        if token is None:
            return spans
        first, pos = token.span()
        lead = data[first]
        # Right after a word character, a token may be part of the word: `somee'x'` is a word
        # and a plain string, `a$b$` one word. (Not a regex look-behind: it would look at the
        # bytes before `start`, which are not SQL.)
        after_word = first > start and _is_word_char(data[first - 1])
        if lead == ord("/"):  # a block comment
            depth = 1
            while depth:
                edge = _COMMENT_EDGE.search(data, pos, end)
                if edge is None:
                    return spans  # unterminated: Postgres reports it
                depth += 1 if edge.group() == b"/*" else -1
                pos = edge.end()
        elif lead in b"eE'":
            escapes = lead != ord("'") and not after_word  # E'...'
            if lead != ord("'") and after_word:
                first += 1  # a word ending in e, then a plain string
            # B'', X'', N'', U&'' and a string right after a word are not plain strings.
            prefixed = (
                not escapes
                and first > start
                and (data[first - 1] == ord("&") or _is_word_char(data[first - 1]))
            )
            body = _ESCAPE_BODY if escapes else _PLAIN_BODY
            while True:
                match = body.match(data, pos, end)
                assert match is not None  # every part of the pattern may match nothing
                if match.group("close") is None:
                    return spans  # unterminated
                more = _CONTINUED.match(data, match.end(), end)
                if more is None:
                    pos = match.end()
                    break
                pos = more.end()
            if pos - first >= LONG_LITERAL and not prefixed:
                spans.append((first, pos))
        elif lead == ord("$"):
            if after_word:
                pos = first + 1  # `a$b$`: a word, not a dollar quote
                continue
            delimiter = token.group()
            close = data.find(delimiter, pos, end)
            if close < 0:
                return spans
            pos = close + len(delimiter)
            if pos - first >= LONG_LITERAL:
                spans.append((first, pos))
        # else a comment or a quoted identifier, skipped whole


def _is_word_char(byte: int) -> bool:
    return byte >= 0x80 or chr(byte).isalnum() or byte in b"_$"


def _check_utf8(view: memoryview) -> None:
    """Raises UnicodeDecodeError unless `view` is UTF-8, a chunk at a time."""
    size = len(view)
    pos = 0
    while pos < size:
        final = pos + _CHECK_CHUNK >= size
        _text, used = codecs.utf_8_decode(view[pos : pos + _CHECK_CHUNK], "strict", final)
        pos += used
