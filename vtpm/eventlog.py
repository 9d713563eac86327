"""The TCG PC Client crypto-agile event log: parse it strictly, replay it into the PCR values it promises.

A firmware (OVMF, a host's UEFI) logs every measurement it extends into the
TPM; a verifier replays the log and compares the result with PCR values read
or quoted from the TPM. The log (TCG PC Client Platform Firmware Profile,
section 10) starts with one SHA-1 format ``TCG_PCR_EVENT`` whose data is the
``Spec ID Event03`` structure naming the hash algorithms and their digest sizes,
followed by ``TCG_PCR_EVENT2`` entries with one digest per algorithm
(``TPML_DIGEST_VALUES``). Everything is little-endian.

Every length is checked against what is left of the input and against the
Spec ID's table, so a truncated or forged log raises ``EventLogError`` naming
the event and byte offset, never an IndexError or a silent short read.

Replay: PCRs start at zero (17-22, the D-RTM PCRs, at all ones); EV_NO_ACTION
events are not extended, except that a ``StartupLocality`` EV_NO_ACTION event in
PCR 0 sets PCR 0's starting value to the locality in its last byte (a locality-3
startup, PFP 10.4.5.3), and an EV_EFI_HCRTM_EVENT in PCR 0 means an H-CRTM
sequence reset it to 4 first (TPM 2.0 Part 1, 34.3).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from vtpm.constants import ALG
from vtpm.crypto import HASHES, digest

try:  # the parse and replay loops compiled over OpenSSL (vtpm/_measure.c); this module stays the reference
    from vtpm import _measure

    BACKEND = "openssl"
except ImportError:  # extension not built (no compiler or OpenSSL headers)
    _measure = None  # type: ignore[assignment]
    BACKEND = "python"

PCR_COUNT = 24
DRTM_PCRS = range(17, 23)  # reset to all ones, not zeros
SPEC_ID_SIGNATURE = b"Spec ID Event03\0"
STARTUP_LOCALITY_SIGNATURE = b"StartupLocality\0"
MAX_ALGORITHMS = 16  # far above the five hashes TCG has assigned to PCR banks; bounds a forged table


class EventLogError(ValueError):
    """The event log is malformed or cannot be replayed; the message says where and why."""


class EventType(enum.IntEnum):
    """Event types of the PC Client Platform Firmware Profile (10.4.1)."""

    EV_PREBOOT_CERT = 0x0
    EV_POST_CODE = 0x1
    EV_UNUSED = 0x2
    EV_NO_ACTION = 0x3
    EV_SEPARATOR = 0x4
    EV_ACTION = 0x5
    EV_EVENT_TAG = 0x6
    EV_S_CRTM_CONTENTS = 0x7
    EV_S_CRTM_VERSION = 0x8
    EV_CPU_MICROCODE = 0x9
    EV_PLATFORM_CONFIG_FLAGS = 0xA
    EV_TABLE_OF_DEVICES = 0xB
    EV_COMPACT_HASH = 0xC
    EV_IPL = 0xD
    EV_IPL_PARTITION_DATA = 0xE
    EV_NONHOST_CODE = 0xF
    EV_NONHOST_CONFIG = 0x10
    EV_NONHOST_INFO = 0x11
    EV_OMIT_BOOT_DEVICE_EVENTS = 0x12
    EV_EFI_EVENT_BASE = 0x80000000
    EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
    EV_EFI_VARIABLE_BOOT = 0x80000002
    EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
    EV_EFI_BOOT_SERVICES_DRIVER = 0x80000004
    EV_EFI_RUNTIME_SERVICES_DRIVER = 0x80000005
    EV_EFI_GPT_EVENT = 0x80000006
    EV_EFI_ACTION = 0x80000007
    EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x80000008
    EV_EFI_HANDOFF_TABLES = 0x80000009
    EV_EFI_PLATFORM_FIRMWARE_BLOB2 = 0x8000000A
    EV_EFI_HANDOFF_TABLES2 = 0x8000000B
    EV_EFI_VARIABLE_BOOT2 = 0x8000000C
    EV_EFI_HCRTM_EVENT = 0x80000010
    EV_EFI_VARIABLE_AUTHORITY = 0x800000E0
    EV_EFI_SPDM_FIRMWARE_BLOB = 0x800000E1
    EV_EFI_SPDM_FIRMWARE_CONFIG = 0x800000E2


def event_type_name(event_type: int) -> str:
    """The PFP name of ``event_type`` (``EV_IPL``), or its hex value for a type the profile does not define."""
    try:
        return EventType(event_type).name
    except ValueError:
        return f"0x{event_type:08x}"


# ----------------------------------------------------------------------------- wire structures

# Fixed-size parts, little-endian. The variable parts (algorithm table, digests, event data) are sized by
# fields read before them and taken through _Reader.take, which checks each length against what is left.
# (`struct` rather than `construct` here: the layouts are flat integers, and a log is parsed per attestation,
# where construct's per-call overhead made parsing about 40 times slower.)
_PCR_EVENT = struct.Struct("<II20sI")  # TCG_PCR_EVENT: pcrIndex, eventType, SHA-1 digest, eventSize
_SPEC_ID_HEAD = struct.Struct("<16sIBBBBI")  # signature, platformClass, minor, major, errata, uintnSize, count
_ALGORITHM_SIZE = struct.Struct("<HH")  # TCG_EfiSpecIdEventAlgorithmSize: algorithmId, digestSize
_EVENT2_HEAD = struct.Struct("<III")  # TCG_PCR_EVENT2: pcrIndex, eventType, TPML_DIGEST_VALUES.count
_DIGEST_ALG = struct.Struct("<H")
_SIZE = struct.Struct("<I")
_U8 = struct.Struct("<B")


@dataclass(frozen=True)
class SpecIdEvent:
    """The Spec ID Event03 of the log's first entry: which banks the log carries, with their digest sizes."""

    platform_class: int
    spec_version: tuple[int, int, int]  # major, minor, errata
    uintn_size: int
    digest_sizes: Mapping[int, int]  # TPM_ALG_ID -> digest size, in the log's order
    vendor_info: bytes


class Event(NamedTuple):
    """One TCG_PCR_EVENT2 entry (``number`` counts from 1; the Spec ID header is entry 0).

    A NamedTuple rather than a frozen dataclass: a log is parsed per attestation, and a frozen
    dataclass's ``__init__`` costs several times as much per event."""

    number: int
    offset: int
    pcr: int
    event_type: int
    digests: Mapping[int, bytes]  # TPM_ALG_ID -> digest
    data: bytes

    @property
    def type_name(self) -> str:
        """The event type's PFP name, or its hex value if unknown (see ``event_type_name``)."""
        return event_type_name(self.event_type)


@dataclass(frozen=True)
class EventLog:
    """A parsed crypto-agile event log: its Spec ID header and the events in log order."""

    spec_id: SpecIdEvent
    header_data: bytes  # the first entry's event data (the raw Spec ID structure)
    events: tuple[Event, ...]

    @property
    def algorithms(self) -> tuple[int, ...]:
        """The TPM_ALG_IDs of the banks the log carries a digest for, in the Spec ID's order."""
        return tuple(self.spec_id.digest_sizes)


class _Reader:
    """A cursor over the log that refuses to read past its end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def remaining(self) -> int:
        return len(self.data) - self.offset

    def take(self, size: int, what: str) -> bytes:
        if size > self.remaining():
            raise EventLogError(f"{what} at offset {self.offset} needs {size} bytes, {self.remaining()} left")
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk

    def unpack(self, layout: struct.Struct, what: str) -> tuple[Any, ...]:
        return layout.unpack(self.take(layout.size, what))


# ----------------------------------------------------------------------------- parsing


def _parse_spec_id(data: bytes) -> SpecIdEvent:
    reader = _Reader(data)
    signature, platform_class, minor, major, errata, uintn_size, count = reader.unpack(_SPEC_ID_HEAD,
                                                                                        "Spec ID Event03")
    if signature != SPEC_ID_SIGNATURE:
        raise EventLogError(f"the first event is not a Spec ID Event03 (signature {signature!r}): "
                            "not a crypto-agile log")
    if not 0 < count <= MAX_ALGORITHMS:
        raise EventLogError(f"Spec ID Event03 lists {count} algorithms (1-{MAX_ALGORITHMS} allowed)")
    sizes: dict[int, int] = {}
    for _ in range(count):
        alg, size = reader.unpack(_ALGORITHM_SIZE, "Spec ID algorithm entry")
        if alg in sizes:
            raise EventLogError(f"Spec ID Event03 lists algorithm 0x{alg:04x} twice")
        known = HASHES.get(alg)
        if known is not None and known.size != size:
            raise EventLogError(f"Spec ID Event03 gives {known.name} digest size {size}, not {known.size}")
        if size == 0:
            raise EventLogError(f"Spec ID Event03 gives algorithm 0x{alg:04x} digest size 0")
        sizes[alg] = size
    (vendor_size,) = reader.unpack(_U8, "Spec ID vendorInfoSize")
    vendor_info = reader.take(vendor_size, "Spec ID vendorInfo")
    if reader.remaining():
        raise EventLogError(f"Spec ID Event03 has {reader.remaining()} bytes after its vendorInfo")
    return SpecIdEvent(platform_class, (major, minor, errata), uintn_size, sizes, vendor_info)


def _parse_event2(reader: _Reader, number: int, sizes: Mapping[int, int]) -> Event:
    """One TCG_PCR_EVENT2. Bounds are checked inline and messages built only on failure: this loop
    runs for every event of every attestation."""
    data, offset, total = reader.data, reader.offset, len(reader.data)
    if offset + 12 > total:
        raise EventLogError(f"event {number} (offset {offset}) header at offset {offset} needs 12 bytes, "
                            f"{total - offset} left")
    pcr, event_type, digest_count = _EVENT2_HEAD.unpack_from(data, offset)
    if pcr >= PCR_COUNT:
        raise EventLogError(f"event {number} (offset {offset}): PCR index {pcr} (0-{PCR_COUNT - 1} allowed)")
    if digest_count > len(sizes):
        raise EventLogError(f"event {number} (offset {offset}): {digest_count} digests, the Spec ID lists "
                            f"{len(sizes)} algorithms")
    position = offset + 12
    digests: dict[int, bytes] = {}
    for _ in range(digest_count):
        if position + 2 > total:
            raise EventLogError(f"event {number} (offset {offset}) digest algorithm at offset {position} needs "
                                f"2 bytes, {total - position} left")
        (alg,) = _DIGEST_ALG.unpack_from(data, position)
        size = sizes.get(alg)
        if size is None:
            raise EventLogError(f"event {number} (offset {offset}): digest algorithm 0x{alg:04x} is not in the "
                                "Spec ID Event03")
        if alg in digests:
            raise EventLogError(f"event {number} (offset {offset}): two digests for algorithm 0x{alg:04x}")
        position += 2
        if position + size > total:
            raise EventLogError(f"event {number} (offset {offset}) digest at offset {position} needs {size} bytes, "
                                f"{total - position} left")
        digests[alg] = data[position:position + size]
        position += size
    if position + 4 > total:
        raise EventLogError(f"event {number} (offset {offset}) event size at offset {position} needs 4 bytes, "
                            f"{total - position} left")
    (size,) = _SIZE.unpack_from(data, position)
    position += 4
    if position + size > total:
        raise EventLogError(f"event {number} (offset {offset}) event data at offset {position} needs {size} bytes, "
                            f"{total - position} left")
    reader.offset = position + size
    return Event(number, offset, pcr, event_type, digests, data[position:position + size])


def parse_event_log(data: bytes) -> EventLog:
    """Parse a crypto-agile event log (e.g. ``binary_bios_measurements``); EventLogError when malformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("the event log must be bytes")
    reader = _Reader(bytes(data))
    if not reader.remaining():
        raise EventLogError("the event log is empty")
    pcr, event_type, sha1, size = reader.unpack(_PCR_EVENT, "the first event (TCG_PCR_EVENT)")
    if event_type != EventType.EV_NO_ACTION or pcr != 0 or any(sha1):
        raise EventLogError("the first event is not the EV_NO_ACTION Spec ID event of a crypto-agile log "
                            f"(PCR {pcr}, type {event_type_name(event_type)})")
    header_data = reader.take(size, "the Spec ID event data")
    spec_id = _parse_spec_id(header_data)
    sizes = spec_id.digest_sizes
    events = None
    if _measure is not None:  # None when an entry is malformed: the Python parser below says why
        events = _measure.parse_events(reader.data, reader.offset, tuple(sizes), tuple(sizes.values()), Event)
    if events is None:
        events = _parse_events(reader, sizes)
    return EventLog(spec_id, header_data, events)


def _parse_events(reader: _Reader, sizes: Mapping[int, int]) -> tuple[Event, ...]:
    """The TCG_PCR_EVENT2 entries after the Spec ID event (the reference the compiled loop follows)."""
    algs = tuple(sizes)
    # The usual entry has one digest per bank in the Spec ID's order: one struct reads the whole
    # TPML_DIGEST_VALUES and the event size; anything else takes the general path below.
    block = struct.Struct("<III" + "".join(f"H{sizes[alg]}s" for alg in algs) + "I")
    count = len(algs)
    data, total = reader.data, len(reader.data)
    events = []
    append = events.append
    number = 0
    while reader.offset < total:
        number += 1
        offset = reader.offset
        if offset + block.size <= total:
            fields = block.unpack_from(data, offset)
            pcr, event_type, digest_count = fields[0], fields[1], fields[2]
            if digest_count == count and fields[3:-1:2] == algs and pcr < PCR_COUNT:
                start = offset + block.size
                end = start + fields[-1]
                if end <= total:
                    append(Event(number, offset, pcr, event_type, dict(zip(algs, fields[4:-1:2])), data[start:end]))
                    reader.offset = end
                    continue
        append(_parse_event2(reader, number, sizes))  # unusual layout, or an error to report
    return tuple(events)


# ----------------------------------------------------------------------------- replay


HCRTM_LOCALITY = 4


def startup_locality(log: EventLog) -> int | None:
    """PCR 0's starting locality: 4 after an H-CRTM event, else a StartupLocality event's, else None."""
    first = None  # the first StartupLocality event, used only when there is no H-CRTM event
    hcrtm, no_action = EventType.EV_EFI_HCRTM_EVENT, EventType.EV_NO_ACTION
    for event in log.events:
        if event.pcr == 0:
            if event.event_type == hcrtm:
                return HCRTM_LOCALITY
            if first is None and event.event_type == no_action and event.data.startswith(STARTUP_LOCALITY_SIGNATURE):
                first = event
    if first is None:
        return None
    if len(first.data) != len(STARTUP_LOCALITY_SIGNATURE) + 1:
        raise EventLogError(f"event {first.number}: StartupLocality data is {len(first.data)} bytes, "
                            f"not {len(STARTUP_LOCALITY_SIGNATURE) + 1}")
    return first.data[-1]


def initial_value(pcr: int, size: int, locality: int | None = None) -> bytes:
    """A PCR's value before the first extend: zeros (ones for D-RTM PCRs; PCR 0 holds a startup locality)."""
    if pcr in DRTM_PCRS:
        return b"\xff" * size
    if pcr == 0 and locality is not None:
        return bytes(size - 1) + bytes([locality])
    return bytes(size)


@functools.lru_cache(maxsize=64)
def _initial_values(size: int, locality: int | None) -> tuple[bytes, ...]:
    """All 24 initial values of a bank (constants, made once)."""
    return tuple(initial_value(index, size, locality) for index in range(PCR_COUNT))


def replay(log: EventLog, algorithms: Iterable[int] | None = None) -> dict[int, dict[int, bytes]]:
    """The PCR values (bank TPM_ALG_ID -> PCR index -> digest, all 24 PCRs) the log's events produce.

    ``algorithms`` defaults to every bank in the Spec ID; a bank the vTPM has no hash
    for, or an extended event without a digest for a requested bank, raises EventLogError."""
    banks = tuple(log.algorithms if algorithms is None else algorithms)
    for alg in banks:
        if alg not in log.spec_id.digest_sizes:
            raise EventLogError(f"the log has no {_alg_name(alg)} bank")
        if alg not in HASHES:
            raise EventLogError(f"cannot replay the {_alg_name(alg)} bank: no hash implementation")
    locality = startup_locality(log)
    no_action = int(EventType.EV_NO_ACTION)
    if _measure is not None and type(log.events) is tuple:
        compiled = {}
        for alg in banks:  # None for anything irregular: the loop below then raises what is wrong
            values = _measure.replay_bank(log.events, alg, no_action, _initial_values(HASHES[alg].size, locality))
            if values is None:
                break
            compiled[alg] = dict(enumerate(values))
        else:
            return compiled
    pcrs = {alg: {index: initial_value(index, HASHES[alg].size, locality) for index in range(PCR_COUNT)}
            for alg in banks}
    hashers = [(alg, pcrs[alg], _hash_constructor(alg)) for alg in banks]
    for event in log.events:
        if event.event_type == no_action:
            continue
        digests, index = event.digests, event.pcr
        for alg, bank, new in hashers:
            value = digests.get(alg)
            if value is None:
                raise EventLogError(f"event {event.number} ({event.type_name}, PCR {event.pcr}) "
                                    f"has no {_alg_name(alg)} digest")
            bank[index] = new(bank[index] + value).digest()
    return pcrs


def _hash_constructor(alg: int) -> Any:
    """hashlib's constructor for the bank (one call per extend, no table lookups)."""
    return getattr(hashlib, HASHES[alg].name)


def _alg_name(alg: int) -> str:
    try:
        return ALG(alg).name.lower()
    except ValueError:
        return f"algorithm 0x{alg:04x}"


BANK_NAMES = {ALG.SHA1: "sha1", ALG.SHA256: "sha256", ALG.SHA384: "sha384", ALG.SHA512: "sha512",
              ALG.SM3_256: "sm3_256"}


def bank_name(alg: int) -> str:
    """The bank's name as Linux (``pcr-<name>``) and tpm2-tools spell it."""
    return BANK_NAMES.get(alg) or _alg_name(alg)


# ----------------------------------------------------------------------------- writing

SEPARATOR_DATA = b"\x00\x00\x00\x00"  # EV_SEPARATOR: the UINT32 0, as UEFI firmware logs it
PLATFORM_CLASS_CLIENT = 0
UINTN_SIZE_64 = 2  # UINTN is a UINT64 (x86-64 firmware)


def spec_id_event(algorithms: Iterable[int], vendor_info: bytes = b"") -> bytes:
    """The Spec ID Event03 structure (PFP 10.4.5.1) listing every bank the log carries."""
    algs = tuple(algorithms)
    if not 0 < len(algs) <= MAX_ALGORITHMS or len(set(algs)) != len(algs):
        raise EventLogError("a log needs 1-16 distinct algorithms")
    unknown = [a for a in algs if a not in HASHES]
    if unknown:
        raise EventLogError(f"no hash implementation for {_alg_name(unknown[0])}")
    if len(vendor_info) > 255:
        raise EventLogError("vendorInfo is limited to 255 bytes")
    table = b"".join(_ALGORITHM_SIZE.pack(alg, HASHES[alg].size) for alg in algs)
    return (_SPEC_ID_HEAD.pack(SPEC_ID_SIGNATURE, PLATFORM_CLASS_CLIENT, 0, 2, 0, UINTN_SIZE_64, len(algs))
            + table + _U8.pack(len(vendor_info)) + vendor_info)


class EventLogWriter:
    """Builds a crypto-agile log the way UEFI firmware writes ``binary_bios_measurements``.

    The first entry is the SHA-1 format TCG_PCR_EVENT carrying the Spec ID event; every
    further entry is a TCG_PCR_EVENT2 with one digest per bank, in the Spec ID's order.
    ``measure`` hashes the measured bytes in every bank and returns the digests, which is
    what the caller extends into the TPM: log and PCRs cannot drift apart.
    """

    def __init__(self, algorithms: Iterable[int], vendor_info: bytes = b"") -> None:
        self.algorithms = tuple(algorithms)
        header = spec_id_event(self.algorithms, vendor_info)
        self._parts = [_PCR_EVENT.pack(0, EventType.EV_NO_ACTION, bytes(20), len(header)), header]
        self.count = 0

    def record(self, pcr: int, event_type: int, data: bytes, digests: Mapping[int, bytes]) -> None:
        """Append one TCG_PCR_EVENT2 with the given digests (every bank of the log, right sizes)."""
        if not 0 <= pcr < PCR_COUNT:
            raise EventLogError(f"PCR index {pcr} (0-{PCR_COUNT - 1} allowed)")
        if set(digests) != set(self.algorithms):
            raise EventLogError("an event needs a digest for every bank of the log, and no other")
        parts = [_EVENT2_HEAD.pack(pcr, event_type, len(self.algorithms))]
        for alg in self.algorithms:
            value = digests[alg]
            if len(value) != HASHES[alg].size:
                raise EventLogError(f"{_alg_name(alg)} digest of {len(value)} bytes")
            parts += [_DIGEST_ALG.pack(alg), value]
        parts += [_SIZE.pack(len(data)), data]
        self._parts.extend(parts)
        self.count += 1

    def measure(self, pcr: int, event_type: int, data: bytes, measured: bytes | None = None) -> dict[int, bytes]:
        """Log an event whose digests hash ``measured`` (default: the event data itself); return them."""
        content = data if measured is None else measured
        digests = {alg: digest(alg, content) for alg in self.algorithms}
        self.record(pcr, event_type, data, digests)
        return digests

    def no_action(self, pcr: int, data: bytes) -> None:
        """An EV_NO_ACTION event: logged with zero digests, never extended."""
        self.record(pcr, EventType.EV_NO_ACTION, data, {alg: bytes(HASHES[alg].size) for alg in self.algorithms})

    def to_bytes(self) -> bytes:
        """The log as firmware leaves it (binary_bios_measurements): header, then every event."""
        return b"".join(self._parts)
