"""vtpm.eventlog: a real OVMF log replays to the PCRs its guest read; malformed logs raise EventLogError only."""

from __future__ import annotations

import hashlib
import struct

import pytest

from support.eventlogs import OVMF_LOG, SIZES, event2, guest_pcrs, header, spec_id
from vtpm.constants import ALG
from vtpm.eventlog import (EventLogError, EventType, bank_name, initial_value, parse_event_log, replay,
                           startup_locality)


# ----------------------------------------------------------------------------- the real log


def test_the_ovmf_log_replays_to_the_pcrs_the_guest_read() -> None:
    log = parse_event_log(OVMF_LOG)
    assert log.spec_id.spec_version == (2, 0, 0)
    assert list(log.spec_id.digest_sizes) == [ALG.SHA1, ALG.SHA256, ALG.SHA384, ALG.SHA512]
    assert len(log.events) == 24 and log.events[-1].offset + 12 < len(OVMF_LOG)
    expected = guest_pcrs()
    replayed = replay(log)
    for alg, values in replayed.items():
        for index in range(8):
            assert values[index] == expected[bank_name(alg)][index], (bank_name(alg), index)
    assert replayed[ALG.SHA256][9] == expected["sha256"][9]  # the kernel's EFI stub measured the initrd there
    assert replay(log, [ALG.SHA256]).keys() == {ALG.SHA256}


def _field_offsets() -> list[int]:
    """Where each event's PCR index, digest count, first digest and event size lie in the real log."""
    offsets = [0, 4, 28, 32, 48, 56]  # the Spec ID entry: type, event size, signature, algorithm count/table
    for event in parse_event_log(OVMF_LOG).events:
        size_field = event.offset + 12 + sum(2 + len(value) for value in event.digests.values())
        offsets += [event.offset, event.offset + 8, event.offset + 12, size_field, size_field + 3]
    return offsets


def test_truncations_are_errors_or_shorter_logs() -> None:
    boundaries = [event.offset for event in parse_event_log(OVMF_LOG).events]
    for end in sorted({*_field_offsets(), *(b + 1 for b in boundaries), len(OVMF_LOG) - 1}):
        if end in boundaries:
            assert len(parse_event_log(OVMF_LOG[:end]).events) == boundaries.index(end)
            continue
        with pytest.raises(EventLogError):
            parse_event_log(OVMF_LOG[:end])


def test_corrupted_fields_never_escape_as_anything_but_event_log_error() -> None:
    for position in _field_offsets():
        for value in (0xFF, OVMF_LOG[position] ^ 0x18):
            mutated = OVMF_LOG[:position] + bytes([value]) + OVMF_LOG[position + 1:]
            try:
                replay(parse_event_log(mutated))
            except EventLogError:
                pass


# ----------------------------------------------------------------------------- replay rules


def test_no_action_is_not_extended_and_startup_locality_sets_pcr0() -> None:
    locality = event2(0, EventType.EV_NO_ACTION, b"StartupLocality\0\x03", {alg: bytes(n) for alg, n in SIZES.items()})
    crtm = event2(0, EventType.EV_S_CRTM_VERSION, b"\0\0")
    log = parse_event_log(header() + locality + crtm)
    assert startup_locality(log) == 3
    start = bytes(31) + b"\x03"
    measured = hashlib.sha256(b"\0\0").digest()
    pcrs = replay(log)
    assert pcrs[ALG.SHA256][0] == hashlib.sha256(start + measured).digest()
    assert pcrs[ALG.SHA256][17] == initial_value(17, 32) == b"\xff" * 32  # D-RTM PCRs start at all ones
    assert pcrs[ALG.SHA1][1] == bytes(20)
    # without the locality event PCR 0 starts at zero
    assert replay(parse_event_log(header() + crtm))[ALG.SHA256][0] == hashlib.sha256(bytes(32) + measured).digest()


def test_an_hcrtm_event_starts_pcr0_at_locality_4() -> None:
    hcrtm = event2(0, EventType.EV_EFI_HCRTM_EVENT, b"HCRTM")
    log = parse_event_log(header() + hcrtm)
    assert startup_locality(log) == 4
    assert replay(log)[ALG.SHA1][0] == hashlib.sha1(bytes(19) + b"\x04" + hashlib.sha1(b"HCRTM").digest()).digest()


def test_replay_refuses_banks_it_cannot_compute() -> None:
    log = parse_event_log(header() + event2(4, EventType.EV_EFI_ACTION, b"x", {ALG.SHA1: bytes(20)}))
    with pytest.raises(EventLogError, match="event 1 .*has no sha256 digest"):
        replay(log)
    with pytest.raises(EventLogError, match="no sha384 bank"):
        replay(log, [ALG.SHA384])
    sm3 = parse_event_log(header(spec_id({ALG.SM3_256: 32})))
    with pytest.raises(EventLogError, match="no hash implementation"):
        replay(sm3)


# ----------------------------------------------------------------------------- malformed logs


@pytest.mark.parametrize("log, message", [
    (b"", "empty"),
    (header(pcr=1), "not the EV_NO_ACTION Spec ID event"),
    (header(event_type=EventType.EV_SEPARATOR), "not the EV_NO_ACTION Spec ID event"),
    (header(spec_id(signature=b"Spec ID Event02\0")), "not a crypto-agile log"),
    (header(spec_id(count=0)), "0 algorithms"),
    (header(spec_id(count=0xFFFFFFFF)), "4294967295 algorithms"),
    (header(spec_id(count=3)), "needs 4 bytes"),
    (header(spec_id({ALG.SHA256: 20})), "sha256 digest size 20"),
    (header(spec_id({0x99: 0})), "digest size 0"),
    (header(spec_id() + b"\0"), "after its vendorInfo"),
    (header(spec_id(vendor=b"abc")[:-1]), "vendorInfo .*needs 3 bytes"),
    (header() + event2(24, EventType.EV_SEPARATOR, b""), "PCR index 24"),
    (header() + event2(0, EventType.EV_SEPARATOR, b"", {ALG.SHA384: bytes(48)}), "0x000c is not in the Spec ID"),
    (header() + event2(0, EventType.EV_SEPARATOR, b"", {ALG.SHA1: bytes(20)})[:-4] + b"\xff\xff\xff\xff",
     "event data .*needs 4294967295 bytes"),
    (header() + struct.pack("<III", 0, 4, 3), "3 digests"),
    (header() + struct.pack("<III", 0, 4, 2) + struct.pack("<H", ALG.SHA1) + bytes(20)
     + struct.pack("<H", ALG.SHA1) + bytes(20) + bytes(4), "two digests"),
    (header() + struct.pack("<III", 0, 4, 1) + struct.pack("<H", ALG.SHA256) + bytes(10), "digest at offset"),
    (header() + event2(0, EventType.EV_NO_ACTION, b"StartupLocality\0\x03\x00", {}), "StartupLocality data"),
], ids=lambda value: value.split()[0] if isinstance(value, str) else "log")
def test_malformed_logs_are_refused_with_a_reason(log: bytes, message: str) -> None:
    with pytest.raises(EventLogError, match=message):
        replay(parse_event_log(log))
