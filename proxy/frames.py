"""The relay's per-chunk work: is this chunk whole frames to pass on as is, and does this SQL
text name an iasql function?

A Postgres frame is a type byte and a big-endian int32 length that counts itself, then the
body. The walks read headers only. They and the name test run for every chunk relayed, so
the C extension `proxy._frames` does them when it was built; the Python functions here are
its twin (used when no C compiler was at hand) and the reference it is tested against.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

_unpack_length = struct.Struct("!i").unpack_from
_SYNC, _QUERY, _BIND, _PORTAL = b"SQBP"  # as ints, like data[pos]
_DESCRIBE_OR_CLOSE = b"DC"

ClientScan = Callable[[bytes, bytes, int, bool], int]
ServerScan = Callable[[bytes, bytes], int]
FindAny = Callable[[tuple[bytes, ...], bytes, int, int], bool]


def table(codes: Iterable[int]) -> bytes:
    """A 256-byte lookup table: non-zero at each frame type in `codes`."""
    marks = bytearray(256)
    for code in codes:
        marks[code] = 1
    return bytes(marks)


def scan_client_py(data: bytes, plain: bytes, limit: int, bind_is_plain: bool) -> int:
    """The number of Sync frames in `data`, or -1 when the chunk needs a closer look.

    -1 unless `data` is whole frames with lengths in [4, limit], each of a `plain` type, a
    Sync, a Describe or Close of a portal, a Bind (if `bind_is_plain`), or a Query that is the
    whole chunk (it counts as one Sync; its text is the caller's to check)."""
    size = len(data)
    pos = syncs = 0
    while pos < size:
        if size - pos < 5:
            return -1
        code = data[pos]
        length = _unpack_length(data, pos + 1)[0]
        if not 4 <= length <= limit or length > size - pos - 1:
            return -1
        if not plain[code]:
            if code == _SYNC:
                syncs += 1
            elif code == _QUERY:
                if pos != 0 or length != size - 1:
                    return -1
                syncs += 1
            elif code in _DESCRIBE_OR_CLOSE and length >= 5 and data[pos + 5] == _PORTAL:
                pass  # nothing to note for a portal
            elif code != _BIND or not bind_is_plain:
                return -1
        pos += 1 + length
    return syncs


def scan_server_py(data: bytes, inspected: bytes) -> int:
    """The offset of the last frame of `data`, or -1 unless `data` is whole frames of which
    none but the last has an `inspected` type."""
    size = len(data)
    pos = 0
    while True:
        if size - pos < 5:
            return -1
        length = _unpack_length(data, pos + 1)[0]
        if length < 4 or length > size - pos - 1:
            return -1
        end = pos + 1 + length
        if end == size:
            return pos
        if inspected[data[pos]]:
            return -1
        pos = end


def find_any_py(needles: tuple[bytes, ...], data: bytes, start: int, end: int) -> bool:
    """Does data[start:end] hold one of `needles` (lower-case bytes), ignoring ASCII case?"""
    text = data[start:end].lower()
    # find(), not `in`: bytes.__contains__ first tries the needle as an int, and raising and
    # clearing that TypeError costs more than the search.
    return any(text.find(needle) >= 0 for needle in needles)


scan_client: ClientScan = scan_client_py
scan_server: ServerScan = scan_server_py
find_any: FindAny = find_any_py
NATIVE = False
try:
    from proxy import _frames  # type: ignore[attr-defined]

    scan_client, scan_server, find_any = _frames.scan_client, _frames.scan_server, _frames.find_any
    NATIVE = True
except ImportError:  # built without a C compiler: the Python walks do the same, slower
    pass
