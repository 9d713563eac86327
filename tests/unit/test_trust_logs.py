"""The TCG event-log writer and the IMA list: what we write parses back and replays as extended."""

from __future__ import annotations

import hashlib
import struct

import pytest

from vtpm.constants import ALG
from vtpm.eventlog import EventLogError, EventLogWriter, EventType, initial_value, parse_event_log, replay
from vtpm.ima import (
    BOOT_AGGREGATE,
    ImaLogError,
    ImaLogWriter,
    boot_aggregate,
    encode_entry,
    parse_ima_log,
    replay_ima,
)

BANKS = (ALG.SHA1, ALG.SHA256)


def _extend(value: bytes, alg: int, measured: bytes) -> bytes:
    name = "sha1" if alg == ALG.SHA1 else "sha256"
    return hashlib.new(name, value + measured).digest()


def test_written_log_parses_back_and_replays_to_what_was_extended() -> None:
    log = EventLogWriter(BANKS)
    expected = {alg: {pcr: initial_value(pcr, 20 if alg == ALG.SHA1 else 32) for pcr in range(24)} for alg in BANKS}
    log.no_action(0, b"StartupLocality\0\x00")
    for pcr, event_type, data, content in [(0, EventType.EV_S_CRTM_VERSION, b"v\0", None),
                                           (4, EventType.EV_EFI_BOOT_SERVICES_APPLICATION, b"img", b"x" * 999),
                                           (7, EventType.EV_SEPARATOR, bytes(4), None)]:
        digests = log.measure(pcr, event_type, data, content)
        for alg in BANKS:
            expected[alg][pcr] = _extend(expected[alg][pcr], alg, digests[alg])
    parsed = parse_event_log(log.to_bytes())
    assert parsed.algorithms == BANKS
    assert [e.event_type for e in parsed.events] == [EventType.EV_NO_ACTION, EventType.EV_S_CRTM_VERSION,
                                                      EventType.EV_EFI_BOOT_SERVICES_APPLICATION,
                                                      EventType.EV_SEPARATOR]
    assert parsed.events[2].digests[ALG.SHA256] == hashlib.sha256(b"x" * 999).digest()
    assert parsed.events[2].data == b"img"
    assert replay(parsed) == expected


def test_writer_refuses_what_a_log_cannot_hold() -> None:
    log = EventLogWriter(BANKS)
    with pytest.raises(EventLogError, match="every bank"):
        log.record(0, EventType.EV_SEPARATOR, bytes(4), {ALG.SHA256: bytes(32)})
    with pytest.raises(EventLogError, match="PCR index 24"):
        log.measure(24, EventType.EV_SEPARATOR, bytes(4))
    with pytest.raises(EventLogError, match="digest of 5 bytes"):
        log.record(0, EventType.EV_SEPARATOR, bytes(4), {ALG.SHA1: bytes(5), ALG.SHA256: bytes(32)})
    assert log.count == 0 and parse_event_log(log.to_bytes()).events == ()


def _ima(paths: int = 5) -> tuple[bytes, dict[int, bytes]]:
    writer = ImaLogWriter(BANKS)
    pcr10 = {alg: bytes(20 if alg == ALG.SHA1 else 32) for alg in BANKS}
    pcrs = {i: bytes([i]) * 32 for i in range(10)}
    entries = [(BOOT_AGGREGATE, boot_aggregate(pcrs))] + [(f"/usr/lib/f{i}", hashlib.sha256(b"%d" % i).digest())
                                                          for i in range(paths)]
    for path, digest in entries:
        for alg, measured in writer.measure(path, digest).items():
            pcr10[alg] = _extend(pcr10[alg], alg, measured)
    return writer.to_bytes(), pcr10


def test_ima_list_round_trips_and_replays_every_bank() -> None:
    data, pcr10 = _ima()
    entries = parse_ima_log(data)
    assert [e.path for e in entries][:2] == [BOOT_AGGREGATE, "/usr/lib/f0"]
    assert entries[1].file_digest == hashlib.sha256(b"0").digest() and entries[1].digest_alg == ALG.SHA256
    assert entries[1].template_hash == hashlib.sha1(entries[1].template_data).digest()
    assert entries[1].template_data.startswith(b"\x28\x00\x00\x00sha256:\x00")  # d-ng: 7 + 1 + 32 bytes
    assert replay_ima(entries, BANKS) == pcr10
    assert data.startswith(encode_entry(BOOT_AGGREGATE, entries[0].file_digest))


def test_ima_sha1_bank_checks_the_listed_template_hash_and_violations_extend_ones() -> None:
    data, _ = _ima(1)
    forged = bytearray(data)
    forged[4] ^= 1  # the first entry's SHA-1 template hash
    entries = parse_ima_log(bytes(forged))
    replay_ima(entries, (ALG.SHA256,))  # the SHA-256 bank hashes the template data itself
    with pytest.raises(ImaLogError, match="IMA entry 1 .*template hash"):
        replay_ima(entries, (ALG.SHA1,))
    violation = bytearray(encode_entry("/tmp/open-for-write", bytes(32)))
    violation[4:24] = bytes(20)
    (entry,) = parse_ima_log(bytes(violation))
    assert entry.violation
    assert replay_ima([entry], (ALG.SHA256,))[ALG.SHA256] == hashlib.sha256(bytes(32) + b"\xff" * 32).digest()


@pytest.mark.parametrize("cut, message", [(10, "truncated header"), (40, "template data of"),
                                          (30, "template is not ima-ng")])
def test_ima_garbage_is_refused_with_the_entry_and_offset(cut: int, message: str) -> None:
    data, _ = _ima(1)
    second = len(encode_entry(BOOT_AGGREGATE, bytes(32)))
    broken = data[:second + cut] if message != "template is not ima-ng" else \
        data[:second + 28] + b"ima-sig" + data[second + 34:]
    with pytest.raises(ImaLogError, match=rf"IMA entry 2 \(offset {second}\): {message}"):
        parse_ima_log(broken)


def test_replay_with_reference_values_equals_replay_and_returns_only_the_unknown_entries() -> None:
    from vtpm.ima import reference_templates, replay_ima_with_reference

    data, pcr10 = _ima(4)
    files = {f"/usr/lib/f{i}": hashlib.sha256(b"%d" % i).digest() for i in range(4)}
    files["/usr/lib/f2"] = bytes(32)  # the list's f2 is not what the reference trusts
    violation = bytearray(encode_entry("/tmp/open-for-write", files["/usr/lib/f0"]))
    violation[4:24] = bytes(20)  # a violation, even of a trusted file, extends ones and is reported
    data += bytes(violation)
    value, unknown, count = replay_ima_with_reference(data, reference_templates(files))
    assert count == 6
    assert value == replay_ima(parse_ima_log(data), (ALG.SHA256,))[ALG.SHA256]
    assert [e.path for e in unknown] == [BOOT_AGGREGATE, "/usr/lib/f2", "/tmp/open-for-write"]
    assert unknown[1] == parse_ima_log(data)[3]
    with pytest.raises(ImaLogError, match=r"IMA entry 7 \(offset \d+\): truncated header"):
        replay_ima_with_reference(data + b"\x0a\x00", reference_templates(files))
    other_pcr = bytearray(encode_entry("/usr/lib/f0", files["/usr/lib/f0"]))
    other_pcr[0] = 11
    with pytest.raises(ImaLogError, match="IMA entry 1 is for PCR 11, not 10"):
        replay_ima_with_reference(bytes(other_pcr), reference_templates(files))


def test_events_in_any_digest_order_parse_the_same() -> None:
    """The parser reads the usual layout (Spec ID order) in one go; another order takes the general path."""
    log = EventLogWriter(BANKS)
    log.measure(4, EventType.EV_EFI_ACTION, b"usual order")
    sha1, sha256 = hashlib.sha1(b"x").digest(), hashlib.sha256(b"x").digest()
    swapped = (struct.pack("<III", 5, EventType.EV_EFI_ACTION, 2) + struct.pack("<H", ALG.SHA256) + sha256
               + struct.pack("<H", ALG.SHA1) + sha1 + struct.pack("<I", 1) + b"x")
    parsed = parse_event_log(log.to_bytes() + swapped + log.to_bytes()[-(12 + 4 + 52 + 4 + 11):])
    assert [e.data for e in parsed.events] == [b"usual order", b"x", b"usual order"]
    assert parsed.events[1].digests == {ALG.SHA1: sha1, ALG.SHA256: sha256}
    with pytest.raises(EventLogError, match=r"event 2 \(offset \d+\): PCR index 30"):
        parse_event_log(log.to_bytes() + struct.pack("<III", 30, 1, 2) + bytes(60))
