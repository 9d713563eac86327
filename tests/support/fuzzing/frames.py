"""TPM command frames that know where their fields are, mutations that lie about them, and the response checker.

A seed is a ``Frame``: tag, command code, handle area, authorization area
(TPMS_AUTH_COMMAND entries) and parameters written with a ``Writer``, which
records the offset of every size field, count, number and element boundary.
``Frame.build`` lays the frame out exactly as ``vtpm.wire.build_command``
does and returns those marks with the bytes, so the mutations can truncate at
every boundary and make one particular size field lie (commandSize,
authorizationSize, a TPM2B size, a nonce or HMAC size, a list count) instead
of only flipping random bits.

``check_response`` is the oracle: whatever the command, the response is
bytes, at least a header long, its size field equals its length, its tag is
TPM_ST_NO_SESSIONS or TPM_ST_SESSIONS (even for a 1.2-tagged command: OVMF takes a
TPM_ST_RSP_COMMAND answer for a TPM 1.2), its code is not TPM_RC_FAILURE (an exception the engine
caught), an error carries no body, and a success with sessions has a
parameterSize and one response session per command session, with nothing
left over.
"""

from __future__ import annotations

import itertools
import random
import signal
import struct
import threading
import time
from dataclasses import dataclass, field

import vtpm.engine  # noqa: F401  (registers every command in vtpm.core.COMMANDS)
from vtpm import wire
from vtpm.constants import ALG, CC, RC, RH, ST, TPMA_SESSION
from vtpm.core import COMMANDS
from vtpm.marshal.objects import TPMT_PUBLIC

TPM12_TAG = 0x00C1
TPM12_RESPONSE_TAG = 0x00C4
MAX_RESPONSE = 4096
HANG_SECONDS = 2.0

# Commands whose response has a handle area (Part 3): everything else answers without handles.
RESPONSE_HANDLES = {
    CC.CreatePrimary: 1, CC.Load: 1, CC.LoadExternal: 1, CC.CreateLoaded: 1, CC.StartAuthSession: 1,
    CC.HMAC_Start: 1, CC.HashSequenceStart: 1, CC.ContextLoad: 1,
}

# Field kinds a Writer marks.
U8, U16, U32, U64 = "u8", "u16", "u32", "u64"
SIZE16 = "size16"  # the UINT16 size of a TPM2B
COUNT = "count"  # the UINT32 count of a TPML
HANDLE = "handle"  # a handle inside the parameters (FlushContext, EvictControl, ...)
WIDTH = {U8: 1, U16: 2, U32: 4, U64: 8, SIZE16: 2, COUNT: 4, HANDLE: 4}


@dataclass
class Writer:
    """Bytes plus marks: (kind, offset) of every number and size field, and element boundaries."""

    data: bytearray = field(default_factory=bytearray)
    marks: list[tuple[str, int]] = field(default_factory=list)
    bounds: list[int] = field(default_factory=list)

    def _put(self, kind: str, value: int, signed: bool = False) -> Writer:
        self.marks.append((kind, len(self.data)))
        self.data += int(value).to_bytes(WIDTH[kind], "big", signed=signed)
        self.bounds.append(len(self.data))
        return self

    def u8(self, value: int) -> Writer:
        return self._put(U8, value)

    def u16(self, value: int) -> Writer:
        return self._put(U16, value)

    def u32(self, value: int) -> Writer:
        return self._put(U32, value)

    def i32(self, value: int) -> Writer:
        return self._put(U32, value, signed=True)

    def u64(self, value: int) -> Writer:
        return self._put(U64, value)

    def handle(self, value: int) -> Writer:
        return self._put(HANDLE, value)

    def count(self, value: int) -> Writer:
        return self._put(COUNT, value)

    def raw(self, data: bytes) -> Writer:
        self.data += data
        self.bounds.append(len(self.data))
        return self

    def b(self, data: bytes) -> Writer:
        """A TPM2B: UINT16 size, then the bytes."""
        self._put(SIZE16, len(data))
        return self.raw(bytes(data))

    def sized(self, body: Writer | bytes) -> Writer:
        """A TPM2B around a structure (TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE, ...), keeping its inner marks."""
        if isinstance(body, (bytes, bytearray)):
            return self.b(body)
        self._put(SIZE16, len(body.data))
        return self.embed(body)

    def embed(self, other: Writer) -> Writer:
        base = len(self.data)
        self.data += other.data
        self.marks += [(kind, base + offset) for kind, offset in other.marks]
        self.bounds += [base + offset for offset in other.bounds]
        self.bounds.append(len(self.data))
        return self

    def bytes(self) -> bytes:
        return bytes(self.data)


def writer() -> Writer:
    return Writer()


@dataclass
class AuthEntry:
    handle: int = RH.PW
    nonce: bytes = b""
    attributes: int = TPMA_SESSION.CONTINUE_SESSION
    hmac: bytes = b""


@dataclass
class Frame:
    """A command before layout: what the seed meant, so mutations can change one part of it."""

    code: int
    handles: list[int] = field(default_factory=list)
    sessions: list[AuthEntry] | None = None
    params: Writer = field(default_factory=Writer)
    tag: int | None = None
    target: int = 0  # the implemented command this frame was seeded from (what the counts are per)
    prelude: list[bytes] = field(default_factory=list)  # sent unmutated first (e.g. the policy a command needs)

    def build(self) -> tuple[bytearray, list[tuple[str, int]], list[int]]:
        """(bytes, marks, boundaries) laid out as vtpm.wire.build_command does."""
        marks: list[tuple[str, int]] = [("tag", 0), ("commandSize", 2), ("code", 6)]
        bounds = [2, 6, 10]
        body = bytearray()
        for h in self.handles:
            marks.append(("handle", 10 + len(body)))
            body += (h & 0xFFFFFFFF).to_bytes(4, "big")
            bounds.append(10 + len(body))
        if self.sessions is not None:
            marks.append(("authorizationSize", 10 + len(body)))
            size_at = len(body)
            body += bytes(4)
            bounds.append(10 + len(body))
            for entry in self.sessions:
                marks.append(("sessionHandle", 10 + len(body)))
                body += (entry.handle & 0xFFFFFFFF).to_bytes(4, "big")
                marks.append(("nonceSize", 10 + len(body)))
                body += len(entry.nonce).to_bytes(2, "big") + entry.nonce
                bounds.append(10 + len(body))
                marks.append(("sessionAttributes", 10 + len(body)))
                body.append(entry.attributes & 0xFF)
                marks.append(("hmacSize", 10 + len(body)))
                body += len(entry.hmac).to_bytes(2, "big") + entry.hmac
                bounds.append(10 + len(body))
            body[size_at : size_at + 4] = (len(body) - size_at - 4).to_bytes(4, "big")
        start = 10 + len(body)
        body += self.params.data
        marks += [(kind, start + offset) for kind, offset in self.params.marks]
        bounds += [start + offset for offset in self.params.bounds]
        tag = self.tag if self.tag is not None else (ST.NO_SESSIONS if self.sessions is None else ST.SESSIONS)
        frame = bytearray(wire.HEADER.pack(tag & 0xFFFF, 10 + len(body), self.code & 0xFFFFFFFF)) + body
        return frame, marks, sorted(set(bounds))


# ----------------------------------------------------------------------------- interesting values

INTERESTING_8 = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x20, 0x40, 0x41, 0x61)
INTERESTING_16 = (0x0000, 0x0001, 0x0004, 0x000B, 0x000C, 0x000D, 0x0010, 0x0012, 0x0014, 0x0018, 0x0023, 0x0025,
                  0x0040, 0x0043, 0x0080, 0x0100, 0x0400, 0x0800, 0x1000, 0x7FFF, 0x8000, 0x8001, 0x8002, 0xFFFE,
                  0xFFFF)
INTERESTING_32 = (0x00000000, 0x00000001, 0x00000003, 0x00000008, 0x00000040, 0x00000100, 0x000003E8, 0x00001000,
                  0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE, 0x40000001, 0x40000007, 0x40000009, 0x4000000C,
                  0x01000000, 0x81000000, 0x02000000, 0x03000000)
INTERESTING_64 = (0, 1, 0x7FFFFFFFFFFFFFFF, 0x8000000000000000, 0xFFFFFFFFFFFFFFFF, 0xFFFF000000000000)

# Handles of every type: permanent (valid and reserved), PCRs, NV, sessions, transient, persistent.
PERMANENT_HANDLES = tuple(range(0x40000000, 0x40000010)) + (0x40000100, 0x4000010F, 0x40000110, 0x40000111)


def random_handle(rng: random.Random, known: list[int] | tuple[int, ...] = ()) -> int:
    kind = rng.randrange(12)
    if kind == 0 and known:
        return rng.choice(known)
    if kind == 1:
        return rng.choice(PERMANENT_HANDLES)
    if kind == 2:
        return rng.choice((rng.randrange(32), 0xFF, 0x100, 0x00FFFFFF))
    if kind == 3:
        return 0x01000000 | rng.choice((rng.randrange(8), rng.randrange(1 << 24), 0x400000, 0xC00000, 0x800001))
    if kind == 4:
        return 0x02000000 | rng.choice((0, 1, 2, 3, rng.randrange(1 << 24)))
    if kind == 5:
        return 0x03000000 | rng.choice((0, 1, 2, 3, rng.randrange(1 << 24)))
    if kind == 6:
        return 0x80000000 | rng.choice((0, 1, 2, 3, 0xFFFFFF, rng.randrange(1 << 24)))
    if kind == 7:
        return 0x81000000 | rng.choice((0, 1, 2, 3, 7, 8, 0x10000, 0x800000, 0x7FFFFF, rng.randrange(1 << 24)))
    if kind == 8:
        return rng.choice((0x80FFFFFF, 0x82000000, 0xFF000000, 0x41000000, 0x04000000, 0x06000000))
    if kind == 9 and known:
        return rng.choice(known) ^ (1 << rng.randrange(32))
    return rng.getrandbits(32)


def random_command_code(rng: random.Random, implemented: list[int]) -> int:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.choice(implemented) + rng.choice((-2, -1, 1, 2))
    if kind == 1:
        return rng.randrange(0x100, 0x1A0)
    if kind == 2:
        return 0x20000000 | rng.randrange(0x200)  # vendor-specific bit
    if kind == 3:
        return rng.choice(implemented) | (1 << rng.randrange(16, 32))
    if kind == 4:
        return rng.choice((0, 0x11E, 0x11F, 0x193, 0x194, 0x19F, 0x1A0, 0xFFFFFFFF, 0x00000144 | 0x80000000))
    return rng.getrandbits(32)


# ----------------------------------------------------------------------------- mutations


def _put(data: bytearray, offset: int, width: int, value: int) -> None:
    if offset + width <= len(data):
        data[offset : offset + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "big")


def _get(data: bytearray, offset: int, width: int) -> int:
    return int.from_bytes(data[offset : offset + width], "big")


def _lie(rng: random.Random, value: int, width: int, room: int) -> int:
    """A wrong value for a size or count field: off by a little, zero, the maximum, just past the data."""
    top = (1 << (8 * width)) - 1
    choice = rng.randrange(8)
    if choice == 0:
        return value + rng.choice((1, 2, 3, 4, 16))
    if choice == 1:
        return max(0, value - rng.choice((1, 2, 3, 4, 16)))
    if choice == 2:
        return 0
    if choice == 3:
        return top
    if choice == 4:
        return room + rng.choice((0, 1))
    if choice == 5:
        return 1 << rng.randrange(8 * width)
    if choice == 6:
        return top // 2 + rng.choice((0, 1))
    return rng.randrange(top + 1)


MARK_WIDTH = {"tag": 2, "commandSize": 4, "code": 4, "handle": 4, "authorizationSize": 4, "sessionHandle": 4,
              "nonceSize": 2, "sessionAttributes": 1, "hmacSize": 2, **WIDTH}


class Mutator:
    """Mutations of a Frame (before layout) and of its bytes (after); ``mutate`` picks a few of them."""

    def __init__(self, rng: random.Random, implemented: list[int]) -> None:
        self.rng = rng
        self.implemented = implemented
        self.known_handles: tuple[int, ...] = ()
        self.splice_pool: list[bytes] = []
        self.frame_ops = [
            (4, self.replace_handle), (1, self.drop_handle), (1, self.add_handle),
            (3, self.session_attributes), (2, self.session_handle), (1, self.session_count),
            (1, self.session_sizes), (2, self.tag), (2, self.command_code),
        ]
        self.byte_ops = [
            (6, self.flip_bits), (3, self.set_byte), (3, self.insert_bytes), (3, self.delete_bytes),
            (4, self.truncate_at_boundary), (3, self.lie_command_size), (3, self.lie_authorization_size),
            (5, self.lie_size_field), (3, self.lie_count), (4, self.interesting_number), (2, self.splice),
            (1, self.duplicate_chunk), (2, self.huge_list),
        ]
        self._frame_weights = list(itertools.accumulate(w for w, _ in self.frame_ops))
        self._byte_weights = list(itertools.accumulate(w for w, _ in self.byte_ops))

    # --------------------------------------------------------------- frame level

    def replace_handle(self, frame: Frame) -> str:
        if not frame.handles:
            frame.handles.append(random_handle(self.rng, self.known_handles))
            return "add-handle"
        i = self.rng.randrange(len(frame.handles))
        frame.handles[i] = random_handle(self.rng, self.known_handles)
        return "replace-handle"

    def drop_handle(self, frame: Frame) -> str:
        if frame.handles:
            frame.handles.pop(self.rng.randrange(len(frame.handles)))
        return "drop-handle"

    def add_handle(self, frame: Frame) -> str:
        frame.handles.insert(self.rng.randrange(len(frame.handles) + 1), random_handle(self.rng, self.known_handles))
        return "add-handle"

    def session_attributes(self, frame: Frame) -> str:
        if not frame.sessions:
            frame.sessions = [AuthEntry()]
        entry = self.rng.choice(frame.sessions)
        entry.attributes = self.rng.choice((
            self.rng.randrange(256), 0, TPMA_SESSION.DECRYPT | 1, TPMA_SESSION.ENCRYPT | 1, 0x61, 0x80 | 1, 0x02 | 1,
            0x04 | 1, 0x18 | 1, 0xFF, entry.attributes ^ (1 << self.rng.randrange(8))))
        return "session-attributes"

    def session_handle(self, frame: Frame) -> str:
        if not frame.sessions:
            frame.sessions = [AuthEntry()]
        entry = self.rng.choice(frame.sessions)
        entry.handle = self.rng.choice((RH.PW, random_handle(self.rng, self.known_handles), 0x02000000, 0x03000000,
                                        0x02000001, 0x03000001, 0x02000002, 0x03000002, 0x40000009 ^ 1))
        if self.rng.random() < 0.3:
            entry.nonce = self.rng.randbytes(self.rng.choice((0, 1, 16, 20, 32, 48, 64)))
        return "session-handle"

    def session_count(self, frame: Frame) -> str:
        rng = self.rng
        n = rng.choice((0, 1, 2, 3, 4, 5))
        current = list(frame.sessions or [])
        while len(current) < n:
            current.append(AuthEntry(rng.choice((RH.PW, 0x02000000, 0x03000000, 0x03000001)),
                                     b"" if rng.random() < 0.5 else bytes(16), rng.randrange(256) & 0x61))
        frame.sessions = current[:n] if n or rng.random() < 0.5 else None
        return "session-count"

    def session_sizes(self, frame: Frame) -> str:
        if not frame.sessions:
            frame.sessions = [AuthEntry()]
        entry = self.rng.choice(frame.sessions)
        size = self.rng.choice((0, 1, 15, 16, 20, 32, 33, 48, 64, 65, 128, 1000))
        if self.rng.random() < 0.5:
            entry.nonce = bytes(size)
        else:
            entry.hmac = self.rng.randbytes(min(size, 70)) + bytes(max(0, size - 70))
        return "session-sizes"

    def tag(self, frame: Frame) -> str:
        current = frame.tag if frame.tag is not None else (ST.SESSIONS if frame.sessions is not None else ST.NO_SESSIONS)
        frame.tag = self.rng.choice((current ^ 0x0003, TPM12_TAG, 0x8000, 0x8003, 0x0000, 0xFFFF, 0x00C2, 0x00C3,
                                     self.rng.getrandbits(16)))
        return "tag"

    def command_code(self, frame: Frame) -> str:
        if self.rng.random() < 0.3:
            frame.code = self.rng.choice(self.implemented)  # another command's layout under this one's code
            return "other-command-code"
        frame.code = random_command_code(self.rng, self.implemented)
        return "random-command-code"

    # --------------------------------------------------------------- byte level

    def flip_bits(self, data: bytearray, marks, bounds) -> str:
        if not data:
            return "flip-bits"
        for _ in range(self.rng.choice((1, 1, 1, 2, 3, 4, 8))):
            i = self.rng.randrange(len(data)) if self.rng.random() < 0.3 or len(data) <= 10 else self.rng.randrange(10, len(data))
            data[i] ^= 1 << self.rng.randrange(8)
        return "flip-bits"

    def set_byte(self, data: bytearray, marks, bounds) -> str:
        if data:
            data[self.rng.randrange(len(data))] = self.rng.choice(INTERESTING_8 + (self.rng.randrange(256),))
        return "set-byte"

    def insert_bytes(self, data: bytearray, marks, bounds) -> str:
        at = self.rng.choice(bounds) if bounds and self.rng.random() < 0.6 else self.rng.randrange(len(data) + 1)
        n = self.rng.choice((1, 1, 2, 4, 8, 16, 64))
        fill = self.rng.choice((b"\x00", b"\xff", None))
        data[at:at] = fill * n if fill else self.rng.randbytes(n)
        if self.rng.random() < 0.6 and len(data) >= 6:
            _put(data, 2, 4, len(data))  # a consistent commandSize: the inserted bytes reach the parser
        return "insert-bytes"

    def delete_bytes(self, data: bytearray, marks, bounds) -> str:
        if len(data) <= 1:
            return "delete-bytes"
        at = self.rng.choice(bounds) if bounds and self.rng.random() < 0.6 else self.rng.randrange(len(data))
        del data[at : at + self.rng.choice((1, 1, 2, 3, 4, 8, 32))]
        if self.rng.random() < 0.6 and len(data) >= 6:
            _put(data, 2, 4, len(data))
        return "delete-bytes"

    def truncate_at_boundary(self, data: bytearray, marks, bounds) -> str:
        at = self.rng.choice(bounds) if bounds else self.rng.randrange(len(data) + 1)
        at = max(0, at + self.rng.choice((0, 0, 0, -1, 1)))
        del data[at:]
        if self.rng.random() < 0.7 and len(data) >= 6:
            _put(data, 2, 4, len(data))  # a consistent commandSize, so the TPM parses the short frame
        return "truncate"

    def lie_command_size(self, data: bytearray, marks, bounds) -> str:
        if len(data) >= 6:
            _put(data, 2, 4, self.rng.choice((_lie(self.rng, len(data), 4, len(data)), 0, 9, 10, 4096, 4097)))
        return "command-size"

    def _pick(self, marks, kinds: tuple[str, ...]) -> int | None:
        found = [offset for kind, offset in marks if kind in kinds]
        return self.rng.choice(found) if found else None

    def lie_authorization_size(self, data: bytearray, marks, bounds) -> str:
        at = self._pick(marks, ("authorizationSize",))
        if at is not None:
            _put(data, at, 4, _lie(self.rng, _get(data, at, 4), 4, len(data) - at - 4))
            if self.rng.random() < 0.3:
                _put(data, at, 4, self.rng.choice((0, 8, 9)))
        return "authorization-size"

    def lie_size_field(self, data: bytearray, marks, bounds) -> str:
        at = self._pick(marks, (SIZE16, "nonceSize", "hmacSize"))
        if at is not None:
            _put(data, at, 2, _lie(self.rng, _get(data, at, 2), 2, len(data) - at - 2))
        return "tpm2b-size"

    def lie_count(self, data: bytearray, marks, bounds) -> str:
        at = self._pick(marks, (COUNT,))
        if at is not None:
            _put(data, at, 4, _lie(self.rng, _get(data, at, 4), 4, (len(data) - at - 4) // 2))
        return "list-count"

    def huge_list(self, data: bytearray, marks, bounds) -> str:
        """A list whose count is within reason but whose elements run on (or a huge count with a few)."""
        at = self._pick(marks, (COUNT,))
        if at is None:
            return "huge-list"
        if self.rng.random() < 0.5:
            _put(data, at, 4, self.rng.choice((0xFFFFFFFF, 0x10000, 1000, 65, 9)))
        else:
            n = self.rng.choice((9, 16, 64, 200))
            _put(data, at, 4, n)
            element = bytes(data[at + 4 : at + 4 + self.rng.choice((2, 4, 6, 34))]) or b"\x00\x0b"
            data[at + 4 : at + 4] = element * n
            _put(data, 2, 4, len(data))
        return "huge-list"

    def interesting_number(self, data: bytearray, marks, bounds) -> str:
        numeric = [(kind, offset) for kind, offset in marks if MARK_WIDTH.get(kind, 0) and kind != "commandSize"]
        if not numeric:
            return "number"
        kind, offset = self.rng.choice(numeric)
        width = MARK_WIDTH[kind]
        pool = {1: INTERESTING_8, 2: INTERESTING_16, 4: INTERESTING_32, 8: INTERESTING_64}[width]
        value = self.rng.choice(pool) if self.rng.random() < 0.8 else self.rng.getrandbits(8 * width)
        if kind in ("handle", "sessionHandle", HANDLE):
            value = random_handle(self.rng, self.known_handles)
        _put(data, offset, width, value)
        return "number"

    def splice(self, data: bytearray, marks, bounds) -> str:
        if not self.splice_pool or len(data) < 10:
            return "splice"
        other = self.rng.choice(self.splice_pool)
        at = self.rng.choice(bounds) if bounds else 10
        start = self.rng.randrange(10, max(11, len(other)))
        data[at:] = other[start : start + self.rng.randrange(1, 256)]
        if self.rng.random() < 0.8:
            _put(data, 2, 4, len(data))
        return "splice"

    def duplicate_chunk(self, data: bytearray, marks, bounds) -> str:
        if len(data) > 10:
            a = self.rng.randrange(10, len(data))
            b = min(len(data), a + self.rng.randrange(1, 64))
            data[b:b] = data[a:b]
            if self.rng.random() < 0.8:
                _put(data, 2, 4, len(data))
        return "duplicate-chunk"

    # --------------------------------------------------------------- the mix

    def mutate(self, frame: Frame) -> tuple[bytes, tuple[str, ...]]:
        """The frame's bytes after 0-4 mutations; the names of the mutations applied."""
        rng = self.rng
        applied: list[str] = []
        if rng.random() < 0.08:
            data, _, _ = frame.build()
            return bytes(data), ("none",)
        n = rng.choice((1, 1, 1, 1, 2, 2, 3, 4))
        frame_level = sum(1 for _ in range(n) if rng.random() < 0.35)
        for _ in range(frame_level):
            op = rng.choices(self.frame_ops, cum_weights=self._frame_weights)[0][1]
            applied.append(op(frame))
        data, marks, bounds = frame.build()
        for _ in range(n - frame_level):
            op = rng.choices(self.byte_ops, cum_weights=self._byte_weights)[0][1]
            applied.append(op(data, marks, bounds))
        return bytes(data), tuple(applied)


# ----------------------------------------------------------------------------- the oracle


def command_session_count(command: bytes) -> int | None:
    """How many TPMS_AUTH_COMMAND entries the command's authorization area holds (None: unparseable)."""
    if len(command) < 10 or int.from_bytes(command[0:2], "big") != ST.SESSIONS:
        return 0
    spec = COMMANDS.get(int.from_bytes(command[6:10], "big"))
    if spec is None:
        return None
    offset = 10 + 4 * len(spec.handles)
    if len(command) < offset + 4:
        return None
    end = offset + 4 + int.from_bytes(command[offset : offset + 4], "big")
    pos, count = offset + 4, 0
    while pos < end:
        if pos + 6 > len(command):
            return None
        pos += 6 + int.from_bytes(command[pos + 4 : pos + 6], "big") + 1
        if pos + 2 > len(command):
            return None
        pos += 2 + int.from_bytes(command[pos : pos + 2], "big")
        count += 1
    return count if pos == end else None


def _response_sessions(area: bytes) -> int | None:
    pos, count = 0, 0
    while pos < len(area):
        if pos + 2 > len(area):
            return None
        pos += 2 + int.from_bytes(area[pos : pos + 2], "big") + 1
        if pos + 2 > len(area):
            return None
        pos += 2 + int.from_bytes(area[pos : pos + 2], "big")
        if pos > len(area):
            return None
        count += 1
    return count


def check_response(command: bytes, response: object) -> tuple[str, str] | None:
    """None if ``response`` is a well-formed answer to ``command``; else (kind, why), kind "crash" or "malformed"."""
    if not isinstance(response, (bytes, bytearray)):
        return "malformed", f"the response is a {type(response).__name__}, not bytes"
    if len(response) < 10:
        return "malformed", f"the response has {len(response)} bytes, less than a header"
    tag, size, rc = struct.unpack_from(">HII", response)
    if size != len(response):
        return "malformed", f"the header says {size} bytes, the response has {len(response)}"
    if len(response) > MAX_RESPONSE:
        return "malformed", f"the response has {len(response)} bytes, more than {MAX_RESPONSE}"
    command_tag = int.from_bytes(command[0:2], "big") if len(command) >= 2 else None
    if tag == TPM12_RESPONSE_TAG:
        return "malformed", "a TPM 1.2 response tag (OVMF would take the TPM for a TPM 1.2)"
    if tag not in (ST.NO_SESSIONS, ST.SESSIONS):
        return "malformed", f"response tag 0x{tag:04x}"
    if rc == RC.FAILURE:
        return "crash", "TPM_RC_FAILURE: the engine caught an exception"
    if rc != RC.SUCCESS:
        if len(response) != 10:
            return "malformed", f"an error response ({wire.describe_rc(rc)}) with a {len(response) - 10}-byte body"
        if tag != ST.NO_SESSIONS:
            return "malformed", "an error response tagged TPM_ST_SESSIONS"
        return None
    if tag != command_tag:
        return "malformed", f"a successful response tagged 0x{tag:04x} to a command tagged 0x{command_tag:04x}"
    code = int.from_bytes(command[6:10], "big")
    handles = RESPONSE_HANDLES.get(code, 0)
    body = response[10:]
    if len(body) < 4 * handles:
        return "malformed", f"a successful response without its {handles} handle(s)"
    if tag == ST.SESSIONS:
        if len(body) < 4 * handles + 4:
            return "malformed", "a successful response with sessions but no parameterSize"
        start = 4 * handles + 4
        param_size = int.from_bytes(body[start - 4 : start], "big")
        if start + param_size > len(body):
            return "malformed", f"parameterSize {param_size} runs past the end of the response"
        sessions = _response_sessions(body[start + param_size :])
        expected = command_session_count(command)
        if sessions is None:
            return "malformed", "the response authorization area does not parse"
        if expected is not None and sessions != expected:
            return "malformed", f"{sessions} response session(s) for {expected} command session(s)"
    return None


class NoAnswer(BaseException):
    """The watchdog's: a call took longer than its limit. A BaseException, so the engine's
    ``except Exception`` (which turns bugs into TPM_RC_FAILURE) does not swallow it."""


class Watchdog:
    """Interrupts a call that runs longer than ``seconds`` with NoAnswer.

    A daemon thread watches the start time the caller sets (``with watchdog:`` around each call costs two
    attribute writes); when a call overruns it sends SIGALRM to the main thread, whose handler raises
    NoAnswer there. Outside the main thread it only watches nothing.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started: float | None = None
        self.active = threading.current_thread() is threading.main_thread()
        self.stop = threading.Event()

    def _fire(self, signum: int, frame: object) -> None:
        if self.started is not None:
            raise NoAnswer(f"no answer within {self.seconds:.0f} s")

    def _watch(self) -> None:
        while not self.stop.wait(min(1.0, self.seconds / 4)):
            started = self.started
            if started is not None and time.perf_counter() - started > self.seconds:
                signal.pthread_kill(threading.main_thread().ident, signal.SIGALRM)  # type: ignore[arg-type]
                self.stop.wait(self.seconds)

    def start(self) -> Watchdog:
        if self.active:
            self.saved = signal.signal(signal.SIGALRM, self._fire)
            self.thread = threading.Thread(target=self._watch, name="fuzz-watchdog", daemon=True)
            self.thread.start()
        return self

    def close(self) -> None:
        if self.active:
            self.stop.set()
            self.thread.join()
            signal.signal(signal.SIGALRM, self.saved)

    def __enter__(self) -> Watchdog:
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.started = None


def rsa_key_generated(command: bytes, response: bytes) -> int:
    """The key size if ``response`` is a successful CreatePrimary, Create or CreateLoaded of an RSA key, else 0.

    Generating RSA primes takes seconds for 3072- and 4096-bit keys (a primary's primes are derived from its
    hierarchy seed, so they cannot come from a faster source); the campaign reports those calls apart from hangs.
    """
    if len(response) < 10 or int.from_bytes(response[6:10], "big") != RC.SUCCESS or len(command) < 10:
        return 0
    code = int.from_bytes(command[6:10], "big")
    if code not in (CC.CreatePrimary, CC.Create, CC.CreateLoaded):
        return 0
    offset = 10 + (4 if code != CC.Create else 0)  # the object handle
    if int.from_bytes(response[0:2], "big") == ST.SESSIONS:
        offset += 4  # parameterSize
    if code != CC.CreatePrimary:
        offset += 2 + int.from_bytes(response[offset : offset + 2], "big")  # outPrivate
    size = int.from_bytes(response[offset : offset + 2], "big")
    try:
        public = TPMT_PUBLIC.parse(response[offset + 2 : offset + 2 + size])
    except Exception:  # noqa: BLE001 - not an RSA public area we can read: not a key generation to excuse
        return 0
    return int(public.parameters.keyBits) if public.type == ALG.RSA else 0


def rc_class(response: bytes, command: bytes) -> str:
    """success / format-0 error / format-1 (parameter, handle, session or unnumbered) / warning / tpm1.2."""
    if len(response) < 10:
        return "short"
    if int.from_bytes(response[0:2], "big") == TPM12_RESPONSE_TAG:
        return "tpm1.2-answer"
    rc = int.from_bytes(response[6:10], "big")
    if rc == 0:
        return "success"
    if rc & 0x080:
        if rc & 0x040:
            return "fmt1-parameter"
        if rc & 0x800:
            return "fmt1-session"
        return "fmt1-handle" if rc & 0x700 else "fmt1"
    if rc & 0x900 == 0x900:
        return "warning"
    return "fmt0-error"


RC_NAMES = {int(rc): rc.name for rc in RC}


def rc_name(response: bytes) -> str:
    """The response code's name without its handle, parameter or session number."""
    if len(response) < 10:
        return "short"
    if int.from_bytes(response[0:2], "big") == TPM12_RESPONSE_TAG:
        return "TPM12_BAD_TAG"
    rc = int.from_bytes(response[6:10], "big")
    base = (rc & 0xBF) if rc & 0x080 else rc
    name = RC_NAMES.get(base)
    return name if name is not None else f"0x{base:03x}"
