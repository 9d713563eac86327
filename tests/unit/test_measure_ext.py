"""vtpm._measure, the compiled parse and replay loops, against the Python code they follow.

On every input, well-formed or truncated, bit-flipped, padded with garbage or forged, the
public functions must give exactly what the pure-Python code gives: the same events and PCR
values, or the same exception with the same message (the compiled loop returns None for
anything irregular and the Python code then reports it).
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import vtpm.eventlog as eventlog
import vtpm.ima as ima
from support.eventlogs import OVMF_LOG, event2, header, spec_id
from vtpm.constants import ALG
from vtpm.eventlog import Event, EventLog, EventLogWriter, EventType, parse_event_log, replay
from vtpm.ima import ImaLogWriter, reference_templates, replay_ima_with_reference

_measure = pytest.importorskip("vtpm._measure", reason="the compiled extension is not built")

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@contextlib.contextmanager
def python_only() -> Iterator[None]:
    """The reference: both modules without the compiled loops."""
    saved = eventlog._measure, ima._measure
    eventlog._measure = ima._measure = None
    try:
        yield
    finally:
        eventlog._measure, ima._measure = saved


def outcome(call: Callable[[], object]) -> tuple:
    try:
        return ("ok", call())
    except Exception as exc:  # noqa: BLE001 - the type and message are what is compared
        return ("error", type(exc), str(exc))


def same_both_ways(call: Callable[[], object]) -> tuple:
    compiled = outcome(call)
    with python_only():
        reference = outcome(call)
    assert compiled == reference
    return compiled


def synthetic_log() -> bytes:
    """SHA-1 + SHA-256, with a StartupLocality event, a D-RTM PCR, and events whose digests are in
    the other order or missing a bank (the parser's general path)."""
    writer = EventLogWriter([ALG.SHA1, ALG.SHA256])
    writer.no_action(0, b"StartupLocality\0\x03")
    for index, pcr in enumerate((0, 4, 7, 8, 9, 17, 23)):
        writer.measure(pcr, EventType.EV_IPL, f"event {index}".encode())
    data = writer.to_bytes()
    swapped = {ALG.SHA256: hashlib.sha256(b"x").digest(), ALG.SHA1: hashlib.sha1(b"x").digest()}
    return data + event2(5, EventType.EV_EFI_ACTION, b"x", swapped) + event2(
        6, EventType.EV_NO_ACTION, b"", {ALG.SHA256: bytes(32)})


LOGS = [OVMF_LOG, synthetic_log()]


def mutate(data: bytes, cut: int, flips: list[tuple[int, int]], insert: tuple[int, bytes]) -> bytes:
    buffer = bytearray(data[:cut])
    for position, value in flips:
        if buffer:
            buffer[position % len(buffer)] = value
    at, extra = insert
    buffer[at % (len(buffer) + 1):at % (len(buffer) + 1)] = extra
    return bytes(buffer)


mutations = dict(
    cut=st.integers(0, 100_000),
    flips=st.lists(st.tuples(st.integers(0, 100_000), st.integers(0, 255)), max_size=4),
    insert=st.tuples(st.integers(0, 100_000), st.binary(max_size=24)),
)


def check_log(data: bytes) -> None:
    result = same_both_ways(lambda: parse_event_log(data))
    if result[0] == "ok":
        log = result[1]
        same_both_ways(lambda: replay(log))
        same_both_ways(lambda: replay(log, (ALG.SHA256,)))


@pytest.mark.parametrize("log", LOGS, ids=["ovmf-4-banks", "synthetic"])
def test_the_compiled_loops_run_and_agree_on_the_logs(log: bytes) -> None:
    parsed = parse_event_log(log)
    assert eventlog.BACKEND == "openssl"
    assert _measure.parse_events(log, parsed.events[0].offset, tuple(parsed.spec_id.digest_sizes),
                                 tuple(parsed.spec_id.digest_sizes.values()), Event) == parsed.events
    check_log(log)


@FUZZ
@given(choice=st.sampled_from(range(len(LOGS))), **mutations)
@example(choice=1, cut=100_000, flips=[], insert=(100_000, struct.pack("<III", 0, 4, 0xFFFFFFFF)))
@example(choice=1, cut=100_000, flips=[], insert=(100_000, struct.pack("<IIIHH", 0, 4, 1, 4, 4)))
def test_a_mutated_event_log_parses_and_replays_as_in_python(choice: int, cut: int, flips: list[tuple[int, int]],
                                                             insert: tuple[int, bytes]) -> None:
    check_log(mutate(LOGS[choice], cut, flips, insert))


@FUZZ
@given(tail=st.binary(max_size=200))
def test_random_entries_after_a_valid_header_parse_as_in_python(tail: bytes) -> None:
    check_log(header() + tail)


@pytest.mark.parametrize("entry", [
    struct.pack("<III", 0, 4, 0xFFFFFFFF),  # digest count far beyond the table
    struct.pack("<III", 24, 4, 0) + struct.pack("<I", 0),  # PCR 24
    event2(1, 4, b"") + struct.pack("<III", 1, 4, 0) + struct.pack("<I", 0xFFFFFFFF),  # event size past the end
    struct.pack("<III", 1, 4, 2) + struct.pack("<H", ALG.SHA1) + bytes(20) + struct.pack("<H", ALG.SHA1),  # twice
    struct.pack("<III", 1, 4, 1) + struct.pack("<H", ALG.SHA384) + bytes(48) + struct.pack("<I", 0),  # not in table
], ids=["count", "pcr", "size", "duplicate", "unknown-alg"])
def test_hostile_entries_give_the_python_error(entry: bytes) -> None:
    result = same_both_ways(lambda: parse_event_log(header() + event2(0, 4, b"ok") + entry))
    assert result[0] == "error" and result[1] is eventlog.EventLogError


def test_replay_of_irregular_event_records_is_left_to_python() -> None:
    spec = eventlog._parse_spec_id(spec_id())
    sha = {ALG.SHA1: bytes(20), ALG.SHA256: bytes(32)}
    for events in [
        (Event(1, 0, 3, 4, {ALG.SHA1: bytes(20)}, b""),),  # no SHA-256 digest
        (Event(1, 0, 30, 4, sha, b""),),  # PCR 30 (the Python loop's KeyError)
        (Event(1, 0, 3, 4, tuple(sha.items()), b""),),  # digests not a dict
        (Event(1, 0, 3, 4, {ALG.SHA1: bytes(20), ALG.SHA256: "text"}, b""),),
        (Event(1, 0, 3, 4, {ALG.SHA1: b"\1" * 300, ALG.SHA256: b"\2" * 300}, b""),),  # long digests still hash
    ]:
        log = EventLog(spec, b"", events)
        same_both_ways(lambda: replay(log))
        same_both_ways(lambda: replay(log, (ALG.SHA256,)))


# ----------------------------------------------------------------------------- the IMA list


FILES = {f"/usr/lib/vmware/file{i}": hashlib.sha256(bytes([i])).digest() for i in range(6)}


def ima_list() -> bytes:
    """boot_aggregate, the image's files, a file not in it, a violation, a SHA-1 file digest."""
    writer = ImaLogWriter([ALG.SHA256])
    writer.measure("boot_aggregate", bytes(32))
    for path, file_digest in FILES.items():
        writer.measure(path, file_digest)
    writer.measure("/tmp/unknown", hashlib.sha256(b"?").digest())
    writer.measure("/etc/sha1-file", hashlib.sha1(b"s").digest(), ALG.SHA1)
    data = writer.to_bytes()
    violation = ima.template_data("/var/log/open-for-write", bytes(32))
    return data + ima._HEAD.pack(10, bytes(20), 6) + b"ima-ng" + struct.pack("<I", len(violation)) + violation


IMA = ima_list()
REFERENCES = {alg: reference_templates(FILES, alg) for alg in (ALG.SHA1, ALG.SHA256, ALG.SHA384)}


def check_ima(data: bytes, alg: int) -> None:
    same_both_ways(lambda: replay_ima_with_reference(data, REFERENCES[alg], alg))


def test_the_compiled_ima_replay_agrees_on_the_list() -> None:
    value, unknown, count = same_both_ways(lambda: replay_ima_with_reference(IMA, REFERENCES[ALG.SHA256]))[1]
    assert count == 10 and [entry.number for entry in unknown] == [1, 8, 9, 10]
    assert _measure.ima_replay_reference(IMA, REFERENCES[ALG.SHA256], ALG.SHA256, 10, ima.MAX_ENTRY_DATA)[0] == value
    for alg in REFERENCES:
        check_ima(IMA, alg)
    same_both_ways(lambda: replay_ima_with_reference(IMA, REFERENCES[ALG.SHA256], pcr=11))  # wrong PCR


@FUZZ
@given(alg=st.sampled_from(sorted(REFERENCES)), **mutations)
@example(alg=ALG.SHA256, cut=100_000, flips=[], insert=(0, struct.pack("<I20sI6sI", 10, b"\1" * 20, 6, b"ima-ng",
                                                                        0xFFFFFFFF)))
def test_a_mutated_ima_list_replays_as_in_python(alg: int, cut: int, flips: list[tuple[int, int]],
                                                 insert: tuple[int, bytes]) -> None:
    check_ima(mutate(IMA, cut, flips, insert), alg)


@FUZZ
@given(data=st.binary(max_size=160))
def test_random_bytes_as_an_ima_list_replay_as_in_python(data: bytes) -> None:
    check_ima(data, ALG.SHA256)
