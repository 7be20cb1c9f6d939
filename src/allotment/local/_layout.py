"""The fixed layout of one manager's state file, and its codec.

A state file holds integers only (little-endian 64-bit words): a header, then **two copies**
of the state. A write goes to the copy that is *not* current, whole (its words, then its
generation and checksum), and the reader takes the valid copy with the higher generation.
A process killed in the middle of a write (it held the ``flock``; the kernel released it)
therefore leaves the previous copy current and intact: a torn write cannot be trusted, by
construction, because it cannot be read. The checksum (BLAKE2b, 64 bits, over the
generation and the words) also catches a file damaged from outside; if neither copy is
valid, or the file is truncated, the file is refused with :class:`CorruptState`.

Words of a copy: ``generation, checksum, count`` then ``count`` payload words:
``names_hash, next_token, next_seq, resizes, declared[n], capacity[n], available[n],
records, record[records]``; a record is ``kind, pid, nonce, rid, seq, token, units[n]``.
Records are kept compact (a removal moves nothing else's meaning: order is by ``seq``).
"""

from __future__ import annotations

import functools
import hashlib
import struct
from typing import Final

import attrs

__all__ = [
    "GRANTED",
    "HEADER_WORDS",
    "MAX_RECORDS",
    "QUEUED",
    "REFUSED",
    "CorruptState",
    "Known",
    "Record",
    "State",
    "file_size",
    "names_hash",
    "read_known",
    "read_state",
    "write_state",
]

MAGIC: Final = 0x616C6C6F746D6E74  # "allotmnt"
LAYOUT_VERSION: Final = 1
HEADER_WORDS: Final = 8
MAX_RECORDS: Final = 1024
"""Holders and waiters of one manager, across every process, at one time."""

GRANTED: Final = 1
QUEUED: Final = 2
REFUSED: Final = 3
"""Taken off the queue by a resize that made it impossible; its owner reads and drops it."""

_FIXED: Final = 4  # names_hash, next_token, next_seq, resizes
_RECORD_FIXED: Final = 6  # kind, pid, nonce, rid, seq, token
_COPY_HEAD: Final = 3  # generation, checksum, count


class CorruptState(Exception):
    """Raised inside the codec; the pool turns it into the user's error."""


@functools.cache
def copy_words(resources: int) -> int:
    return _COPY_HEAD + _FIXED + 3 * resources + 1 + MAX_RECORDS * (_RECORD_FIXED + resources)


def file_size(resources: int) -> int:
    return 8 * (HEADER_WORDS + 2 * copy_words(resources))


def names_hash(names: tuple[str, ...] | None) -> int:
    text = "\x00scalar" if names is None else "\x00".join(names)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=7).digest(), "little")


@attrs.define(eq=False)
class Record:
    kind: int
    pid: int
    nonce: int
    rid: int
    seq: int
    token: int
    units: list[int]


@attrs.define(eq=False)
class Known:
    """A copy as it was validated (read and checksummed, or written) by this process: its
    index, its generation, its bytes (generation, checksum, count and payload) and its
    words. While the file holds these very bytes at that place, and the other copy is
    older, reading the file would decode these words: ``read_known`` then skips the
    checksum and the unpacking, and trusts nothing it has not compared byte for byte."""

    index: int
    generation: int
    raw: bytes
    words: tuple[int, ...]
    # Never changed once made (a plain class: a frozen one costs a microsecond to make).


@attrs.define(eq=False)
class State:
    """One copy, decoded. ``generation`` is that of the copy it was read from. ``known``:
    that copy's bytes, set by the codec when it reads or writes them (not updated by a
    change in memory: it describes the file, not this object)."""

    generation: int
    names_hash: int
    next_token: int
    next_seq: int
    resizes: int
    declared: list[int]
    capacity: list[int]
    available: list[int]
    records: list[Record]
    known: Known | None = None


def header(resources: int) -> bytes:
    words = [MAGIC, LAYOUT_VERSION, resources, MAX_RECORDS] + [0] * (HEADER_WORDS - 4)
    return struct.pack(f"<{HEADER_WORDS}q", *words)


def _checksum(generation: int, payload: bytes) -> int:
    digest = hashlib.blake2b(generation.to_bytes(8, "little") + payload, digest_size=8)
    return int.from_bytes(digest.digest(), "little", signed=True)


def check_header(view: memoryview, resources: int) -> None:
    if len(view) != file_size(resources):
        raise CorruptState(f"its size is {len(view)} bytes, not {file_size(resources)}")
    words = struct.unpack_from("<4q", view, 0)
    if words != (MAGIC, LAYOUT_VERSION, resources, MAX_RECORDS):
        raise CorruptState("its header is not that of a manager with this many resources")


@functools.cache
def _copy_offset(index: int, resources: int) -> int:
    return 8 * (HEADER_WORDS + index * copy_words(resources))


def _read_copy(view: memoryview, index: int, resources: int) -> Known | None:
    """The copy ``index`` if it is valid, else ``None``."""
    offset = _copy_offset(index, resources)
    generation, checksum, count = struct.unpack_from("<3q", view, offset)
    if not 0 <= count <= copy_words(resources) - _COPY_HEAD:
        return None
    start = offset + 8 * _COPY_HEAD
    payload = bytes(view[start : start + 8 * count])
    if generation <= 0 or _checksum(generation, payload) != checksum:
        return None
    raw = bytes(view[offset:start]) + payload
    return Known(index, generation, raw, struct.unpack(f"<{count}q", payload))


def read_state(view: memoryview, resources: int) -> State | None:
    """The current state, ``None`` for a file never written, or :class:`CorruptState`."""
    # The newer copy first: the other is read only if the newer does not pass its checksum.
    first = struct.unpack_from("<q", view, _copy_offset(0, resources))[0]
    second = struct.unpack_from("<q", view, _copy_offset(1, resources))[0]
    order = (0, 1) if first >= second else (1, 0)
    for index in order:
        copy = _read_copy(view, index, resources)
        if copy is not None:
            return _decode(copy, resources)
    if not any(view[8 * HEADER_WORDS :]):
        return None  # fresh: both copies all zeros
    raise CorruptState("neither copy of the state passes its checksum")


def read_known(view: memoryview, resources: int, known: Known | None) -> State | None:
    """What ``read_state`` would return, if the file still holds the copy ``known`` and
    the other copy is older (``None`` otherwise: read it). Exact, not a guess: the copy's
    bytes are compared whole, so a change or a damage anywhere in it is seen."""
    if known is None:
        return None
    offsets = _copy_offsets(resources)
    other = struct.unpack_from("<q", view, offsets[1 - known.index])[0]
    offset = offsets[known.index]
    if other >= known.generation or bytes(view[offset : offset + len(known.raw)]) != known.raw:
        return None
    return _decode(known, resources)


@functools.cache
def _copy_offsets(resources: int) -> tuple[int, int]:
    return _copy_offset(0, resources), _copy_offset(1, resources)


def _decode(known: Known, resources: int) -> State:
    words = known.words
    n = resources
    fixed = _FIXED + 3 * n
    count = words[fixed]
    width = _RECORD_FIXED + n
    if len(words) != fixed + 1 + count * width:
        raise CorruptState("the record count does not match the state's length")
    records = []
    for start in range(fixed + 1, len(words), width):
        kind, pid, nonce, rid, seq, token = words[start : start + _RECORD_FIXED]
        units = list(words[start + _RECORD_FIXED : start + width])
        records.append(Record(kind, pid, nonce, rid, seq, token, units))
    return State(
        known.generation,
        words[0],
        words[1],
        words[2],
        words[3],
        list(words[_FIXED : _FIXED + n]),
        list(words[_FIXED + n : _FIXED + 2 * n]),
        list(words[_FIXED + 2 * n : fixed]),
        records,
        known,
    )


def write_state(view: memoryview, state: State, resources: int) -> None:
    """Write ``state`` as the next generation, into the copy that is not current. The last
    store (generation and checksum) is what makes it current."""
    records = state.records
    if len(records) > MAX_RECORDS:
        raise OverflowError(f"more than {MAX_RECORDS} holders and waiters on one manager")
    words = [state.names_hash, state.next_token, state.next_seq, state.resizes]
    words += state.declared
    words += state.capacity
    words += state.available
    words.append(len(records))
    for record in records:
        words += (record.kind, record.pid, record.nonce, record.rid, record.seq, record.token)
        words += record.units
    count = len(words)
    generation = state.generation + 1
    # Packed after the generation, as the checksum covers them: one pack, no concatenation.
    hashed = struct.pack(f"<{count + 1}q", generation, *words)
    payload = hashed[8:]
    # The copy to write is the older one (the current is the one with ``state.generation``).
    index = generation % 2
    offset = _copy_offsets(resources)[index]
    start = offset + 8 * _COPY_HEAD
    struct.pack_into("<q", view, offset, 0)  # invalid from here until the last store
    view[start : start + len(payload)] = payload
    digest = hashlib.blake2b(hashed, digest_size=8).digest()
    head = struct.pack("<3q", generation, int.from_bytes(digest, "little", signed=True), count)
    view[offset:start] = head
    state.generation = generation
    state.known = Known(index, generation, head + payload, tuple(words))


# -- a plain list of words, for the meters' files (same two-copy rule) ---------------------


def words_file_size(words: int) -> int:
    return 8 * (HEADER_WORDS + 2 * (_COPY_HEAD + words))


def words_header(kind: int, words: int) -> bytes:
    return struct.pack(f"<{HEADER_WORDS}q", MAGIC, LAYOUT_VERSION, kind, words, 0, 0, 0, 0)


def check_words_header(view: memoryview, kind: int, words: int) -> None:
    if len(view) != words_file_size(words):
        raise CorruptState(f"its size is {len(view)} bytes, not {words_file_size(words)}")
    if struct.unpack_from("<4q", view, 0) != (MAGIC, LAYOUT_VERSION, kind, words):
        raise CorruptState("its header is not that of this kind of limiter")


def read_words(view: memoryview, words: int) -> tuple[int, list[int]] | None:
    """``(generation, words)`` of the current copy; ``None`` for a fresh file."""
    copies = []
    for index in (0, 1):
        offset = 8 * (HEADER_WORDS + index * (_COPY_HEAD + words))
        generation, checksum, count = struct.unpack_from("<3q", view, offset)
        if not 0 <= count <= words or generation <= 0:
            continue
        start = offset + 8 * _COPY_HEAD
        payload = bytes(view[start : start + 8 * count])
        if _checksum(generation, payload) == checksum:
            copies.append((generation, payload))
    if not copies:
        if not any(view[8 * HEADER_WORDS :]):
            return None
        raise CorruptState("neither copy of the state passes its checksum")
    generation, payload = max(copies)
    return generation, list(struct.unpack(f"<{len(payload) // 8}q", payload))


def write_words(view: memoryview, generation: int, values: list[int], words: int) -> int:
    """Write ``values`` as generation ``generation + 1`` into the copy that is not current."""
    if len(values) > words:
        raise OverflowError("the limiter's state does not fit its file")
    payload = struct.pack(f"<{len(values)}q", *values)
    generation += 1
    offset = 8 * (HEADER_WORDS + (generation % 2) * (_COPY_HEAD + words))
    start = offset + 8 * _COPY_HEAD
    struct.pack_into("<q", view, offset, 0)
    view[start : start + len(payload)] = payload
    struct.pack_into("<3q", view, offset, generation, _checksum(generation, payload), len(values))
    return generation
