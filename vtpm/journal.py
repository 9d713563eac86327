"""The vTPM state journal's format and replay: sans-IO (bytes in, records out).

A journal sits next to a store's full state (``tpm2-state.journal``,
``X.nvram.journal``) and holds the state changes made since that full state
was written, so a durable change costs one small overwrite and one
``fdatasync`` instead of a whole atomic rewrite. Layout:

- block 0 (``RECORDS_OFFSET`` bytes): the header: magic, version, mode,
  journal id (random), salt (random, per journal), the base it applies to
  (container generation and SHA-256 of the base state), header tag;
- then records back to back: ``length u32 | seq u64 | sealed``, seq 1, 2, 3...;
  the rest of the file is zeros (preallocated), so the first zero length ends it.

Modes: ``SEALED`` (encrypted stores): the store's secret and the header's salt
give, by HKDF-SHA-256 with the store's context (which file of which VM), an
AES-256-GCM key and a header MAC key; a record's nonce is its seq and its AAD
binds the journal id, base generation, seq, length and the previous record's
tag (the header tag for the first), so records cannot be reordered, dropped from
the middle, replayed from another journal or moved to another VM.
``CHECKSUM`` (plain stores): the same chain with SHA-256 instead of the AEAD:
it detects torn and damaged records, not an attacker (the state is in clear).

A record that does not verify, followed by nothing but zeros, is a torn tail
(a crash mid-append: never acknowledged) and is ignored; any other damage is a
``JournalError`` and nothing is replayed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass
from enum import IntEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"VTPMJNL\x01"
VERSION = 1
RECORDS_OFFSET = 4096  # the header fills block 0: records never share a block with it
TAG_SIZE = 16
RECORD_HEAD = struct.Struct(">IQ")  # length of sealed, seq
MAX_RECORD = 1 << 20
_HEADER = struct.Struct(">8sHBx16s32sQ32s")  # magic, version, mode, journal id, salt, base generation, base digest
HEADER_TAG_SIZE = 32
HEADER_SIZE = _HEADER.size + HEADER_TAG_SIZE
_KDF_INFO = b"vtpm state journal v1\0"
_AAD_FIELDS = struct.Struct(">QQI")  # base generation, seq, length (after the journal id, before the previous tag)
_sha256 = hashlib.sha256


class JournalError(ValueError):
    """A journal that is damaged, forged or belongs elsewhere: nothing of it may be replayed."""


class Mode(IntEnum):
    """How records are protected: CHECKSUM (plain stores, a SHA-256 chain) or SEALED (encrypted stores, AES-256-GCM)."""
    CHECKSUM = 0
    SEALED = 1


@dataclass(frozen=True)
class Base:
    """The full state a journal applies to: the store's generation and the SHA-256 of its state bytes."""

    generation: int
    digest: bytes

    @classmethod
    def of(cls, generation: int, raw: bytes) -> "Base":
        """The Base for state bytes ``raw`` written at container generation ``generation``."""
        return cls(generation, hashlib.sha256(raw).digest())


@dataclass(frozen=True)
class Header:
    """A journal's header block: mode, journal id, salt, the base it applies to, and the tag over them."""
    mode: Mode
    journal_id: bytes
    salt: bytes
    base: Base
    tag: bytes

    @property
    def position(self) -> int:
        """The position of an empty journal of this base (see ``position``)."""
        return position(self.base.generation, 0)


def position(generation: int, records: int) -> int:
    """One monotonic number for "base generation, records after it", as recorded for rollback checks."""
    return (generation << 32) | records


class Sealer:
    """Seals and opens one journal's records (and tags its header) under that journal's keys."""

    def __init__(self, mode: Mode, secret: bytes | None, context: bytes, journal_id: bytes, salt: bytes) -> None:
        if (mode is Mode.SEALED) != (secret is not None):
            raise JournalError("a sealed journal needs the store's key and a checksummed one has none")
        self.mode = mode
        self.context = context
        self.journal_id = journal_id
        self._aead: AESGCM | None = None
        self._mac_key = b""
        self._checksum_prefix = b"record\0" + context + b"\0" + journal_id  # what precedes the AAD's fields
        if secret is not None:
            keys = HKDF(hashes.SHA256(), 64, salt, _KDF_INFO + journal_id + context).derive(secret)
            self._aead, self._mac_key = AESGCM(keys[:32]), keys[32:]

    def header_tag(self, fields: bytes) -> bytes:
        """The tag over the header fields: an HMAC under the header key when sealed, a SHA-256 with the context
        otherwise."""
        if self._aead is None:
            return hashlib.sha256(b"header\0" + self.context + b"\0" + fields).digest()
        return hmac.new(self._mac_key, b"header\0" + fields, hashlib.sha256).digest()

    def _aad(self, generation: int, seq: int, prev_tag: bytes, length: int) -> bytes:
        return self.journal_id + _AAD_FIELDS.pack(generation, seq, length) + prev_tag

    def seal(self, generation: int, seq: int, prev_tag: bytes, payload: bytes) -> bytes:
        """The record (head and sealed payload) for ``payload``; its tag is the last TAG_SIZE bytes."""
        length = len(payload) + TAG_SIZE
        if length > MAX_RECORD:
            raise JournalError(f"a journal record of {length} bytes is over the limit of {MAX_RECORD}")
        if self._aead is None:  # SHA-256 of "record\0" | context | "\0" | AAD | payload, as open() checks
            fields = _AAD_FIELDS.pack(generation, seq, length)
            sealed = payload + _sha256(self._checksum_prefix + fields + prev_tag + payload).digest()[:TAG_SIZE]
        else:
            sealed = self._aead.encrypt(seq.to_bytes(12, "big"), payload, self._aad(generation, seq, prev_tag, length))
        return RECORD_HEAD.pack(length, seq) + sealed

    def open(self, generation: int, seq: int, prev_tag: bytes, sealed: bytes) -> bytes | None:
        """The payload, or None when the record does not verify."""
        aad = self._aad(generation, seq, prev_tag, len(sealed))
        if self._aead is None:
            payload, tag = sealed[:-TAG_SIZE], sealed[-TAG_SIZE:]
            good = hashlib.sha256(b"record\0" + self.context + b"\0" + aad + payload).digest()[:TAG_SIZE]
            return payload if hmac.compare_digest(tag, good) else None
        try:
            return self._aead.decrypt(seq.to_bytes(12, "big"), sealed, aad)
        except InvalidTag:
            return None


def new_header(base: Base, secret: bytes | None, context: bytes) -> tuple[bytes, Header, Sealer]:
    """A fresh journal's header block (RECORDS_OFFSET bytes): new id and salt, bound to ``base``."""
    mode = Mode.CHECKSUM if secret is None else Mode.SEALED
    journal_id, salt = secrets.token_bytes(16), secrets.token_bytes(32)
    sealer = Sealer(mode, secret, context, journal_id, salt)
    fields = _HEADER.pack(MAGIC, VERSION, mode, journal_id, salt, base.generation, base.digest)
    tag = sealer.header_tag(fields)
    block = (fields + tag).ljust(RECORDS_OFFSET, b"\0")
    return block, Header(mode, journal_id, salt, base, tag), sealer


def peek_base(data: bytes) -> Base | None:
    """The base a journal's header names, NOT verified (to tell a stale journal from a current one
    before its keys are known); None when it is not a journal header at all."""
    if len(data) < HEADER_SIZE or data[:len(MAGIC)] != MAGIC:
        return None
    *_, generation, digest = _HEADER.unpack_from(data)
    return Base(generation, digest)


def read_header(data: bytes, secret: bytes | None, context: bytes) -> tuple[Header, Sealer]:
    """The header of journal bytes ``data``, verified; JournalError when it is not one of ours."""
    if len(data) < RECORDS_OFFSET or data[:len(MAGIC)] != MAGIC:
        raise JournalError("not a vTPM state journal (bad magic or too short)")
    magic, version, mode, journal_id, salt, generation, digest = _HEADER.unpack_from(data)
    if version != VERSION:
        raise JournalError(f"journal version {version} is not supported")
    if mode not in (Mode.CHECKSUM, Mode.SEALED):
        raise JournalError(f"unknown journal mode {mode}")
    mode = Mode(mode)
    if (mode is Mode.SEALED) != (secret is not None):
        raise JournalError("the journal is " + ("encrypted but the store is not" if secret is None
                                                else "not encrypted but the store is"))
    sealer = Sealer(mode, secret, context, journal_id, salt)
    tag = data[_HEADER.size:HEADER_SIZE]
    if not hmac.compare_digest(tag, sealer.header_tag(data[:_HEADER.size])):
        raise JournalError("the journal header does not verify (damaged, or another store's or VM's journal)")
    if any(data[HEADER_SIZE:RECORDS_OFFSET]):
        raise JournalError("the journal header block has bytes after the header")
    return Header(mode, journal_id, salt, Base(generation, digest), tag), sealer


@dataclass
class Replay:
    """What a journal holds: its header, the payloads of its good records in order, where the next
    record goes, the last tag (the next record's chain value), and whether a torn tail was dropped."""

    header: Header
    sealer: Sealer
    payloads: list[bytes]
    end: int
    last_tag: bytes
    torn: bool

    @property
    def position(self) -> int:
        """The position after the last good record (see ``position``)."""
        return position(self.header.base.generation, len(self.payloads))


def replay(data: bytes, secret: bytes | None, context: bytes) -> Replay:
    """Verify journal bytes and return their records; torn tail ignored, other damage a JournalError."""
    header, sealer = read_header(data, secret, context)
    payloads: list[bytes] = []
    offset, prev_tag = RECORDS_OFFSET, header.tag[:TAG_SIZE]
    size = len(data)
    while offset + RECORD_HEAD.size <= size:
        length, seq = RECORD_HEAD.unpack_from(data, offset)
        if length == 0 and seq == 0:
            break
        start = offset + RECORD_HEAD.size
        end = start + length
        payload = None
        if TAG_SIZE <= length <= MAX_RECORD and end <= size and seq == len(payloads) + 1:
            payload = sealer.open(header.base.generation, seq, prev_tag, data[start:end])
        if payload is None:
            if not any(data[min(max(end, start), size):]):
                return Replay(header, sealer, payloads, offset, prev_tag, torn=True)
            raise JournalError(f"journal record {len(payloads) + 1} at offset {offset} is damaged and is not the "
                               "last one written (records after it follow)")
        payloads.append(payload)
        prev_tag = data[end - TAG_SIZE:end]
        offset = end
    if any(data[offset:]):
        raise JournalError(f"the journal has stray bytes at offset {offset} after its last record")
    return Replay(header, sealer, payloads, offset, prev_tag, torn=False)
