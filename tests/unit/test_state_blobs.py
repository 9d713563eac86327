"""State blobs for live migration, the state lock and control-request framing, in process.

A running engine's permanent and volatile blobs make a second engine continue
where the first stopped (PCRs, a loaded key, a policy session, times); damaged
volatile blobs are refused naming the field and change nothing; the lock
excludes a second holder and saves are dropped while it is given away; control
requests are framed as swtpm frames them (QEMU sends padded unions).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from vtpm import wire
from vtpm.constants import ALG, CC, RH
from vtpm.engine import Tpm
from vtpm.server import swtpm_ctrl
from vtpm.server.device import TpmDevice
from vtpm.server.protocol import Ctrl
from vtpm.server.state_blobs import BlobError, BlobType, decode_volatile
from vtpm.server.state_lock import GuardedStore, StateInUseError, StateLock
from vtpm.storage import PlainStateStore

HMAC_KEY_TEMPLATE = ((0x0008).to_bytes(2, "big") + ALG.SHA256.to_bytes(2, "big") + (0x00040072).to_bytes(4, "big")
                     + wire.tpm2b(b"") + (0x0005).to_bytes(2, "big") + ALG.SHA256.to_bytes(2, "big") + wire.tpm2b(b""))


def ok(response: bytes) -> bytes:
    assert wire.response_code(response) == 0, wire.describe_rc(wire.response_code(response))
    return response


def hmac_of(device: TpmDevice, key: int) -> bytes:
    command = wire.build_command(CC.HMAC, [key], wire.tpm2b(b"data") + ALG.SHA256.to_bytes(2, "big"),
                                 wire.password_session(b"pw"))
    return ok(device.execute(command))[14:]


@pytest.fixture(scope="module")
def source() -> tuple[TpmDevice, dict[str, bytes | int]]:
    device = TpmDevice(Tpm())
    ok(device.execute(wire.STARTUP_CLEAR))
    ok(device.execute(wire.pcr_extend(16, {ALG.SHA256: hashlib.sha256(b"m").digest()})))
    key = int.from_bytes(ok(device.execute(wire.create_primary(HMAC_KEY_TEMPLATE, RH.OWNER, user_auth=b"pw")))[10:14],
                         "big")
    start = wire.build_command(CC.StartAuthSession, [RH.NULL, RH.NULL], wire.tpm2b(bytes(16)) + wire.tpm2b(b"")
                               + b"\x01" + ALG.NULL.to_bytes(2, "big") + ALG.SHA256.to_bytes(2, "big"))
    policy = int.from_bytes(ok(device.execute(start))[10:14], "big")
    ok(device.execute(wire.build_command(CC.PolicyCommandCode, [policy], int(CC.Unseal).to_bytes(4, "big"))))
    facts = {"key": key, "policy": policy, "mac": hmac_of(device, key),
             "pcrs": ok(device.execute(wire.pcr_read([(ALG.SHA256, [0, 16])])))[14:],
             "digest": ok(device.execute(wire.build_command(CC.PolicyGetDigest, [policy])))[10:]}
    return device, facts


def blobs(device: TpmDevice) -> dict[BlobType, bytes]:
    return {kind: device.get_state_blob(kind) for kind in BlobType}


def test_the_destination_continues_where_the_source_stopped(source) -> None:  # type: ignore[no-untyped-def]
    device, facts = source
    before = device.tpm.now_ms()  # read before the state leaves: the moved time is at least this
    moved = blobs(device)
    assert moved[BlobType.SAVESTATE] == b""
    target = TpmDevice(Tpm())
    target.stop()
    for kind, blob in moved.items():
        target.set_state_blob(kind, blob)
    target.init(delete_volatile=True)
    assert ok(target.execute(wire.pcr_read([(ALG.SHA256, [0, 16])])))[14:] == facts["pcrs"]
    assert hmac_of(target, int(facts["key"])) == facts["mac"]
    assert ok(target.execute(wire.build_command(CC.PolicyGetDigest, [int(facts["policy"])])))[10:] == facts["digest"]
    assert target.tpm.state.eps == device.tpm.state.eps
    assert target.tpm.now_ms() >= before  # time since _TPM_Init carries over


def _mutated(raw: bytes, change) -> bytes:  # type: ignore[no-untyped-def]
    doc = json.loads(raw)
    change(doc)
    return json.dumps(doc).encode()


def _first(doc: dict, field: str) -> dict:  # type: ignore[type-arg]
    return next(iter(doc[field].values()))


MUTATIONS = {
    "unknown field": lambda d: d.update(extra=1),
    "missing field": lambda d: d.pop("null_seed"),
    "started not a bool": lambda d: d.update(started="yes"),
    "version": lambda d: d.update(version=2),
    "pcr value size": lambda d: d["pcrs"][str(int(ALG.SHA256))].__setitem__(0, "00"),
    "pcr bank count": lambda d: d["pcrs"][str(int(ALG.SHA256))].pop(),
    "pcr bank not a hash": lambda d: d["pcrs"].update({"6": d["pcrs"][str(int(ALG.SHA256))]}),
    "object handle": lambda d: d.update(objects={"1": _first(d, "objects")}),
    "object public": lambda d: _first(d, "objects").update(public="00ff"),
    "object hierarchy": lambda d: _first(d, "objects").update(hierarchy=5),
    "session handle differs": lambda d: _first(d, "sessions").update(handle=0x03000009),
    "session hash": lambda d: _first(d, "sessions").update(auth_hash=0x99),
    "session field type": lambda d: _first(d, "sessions").update(is_trial="no"),
    "session extra field": lambda d: _first(d, "sessions").update(evil=True),
    "bad hex": lambda d: d.update(null_proof="zz" * 64),
    "negative counter": lambda d: d.update(pcr_update_counter=-1),
    "clock rate zero": lambda d: d.update(clock_rate=0),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_damaged_volatile_blobs_are_refused(source, name: str) -> None:  # type: ignore[no-untyped-def]
    device, _ = source
    raw = device.get_state_blob(BlobType.VOLATILE)
    target = TpmDevice(Tpm())
    target.stop()
    with pytest.raises(BlobError):
        target.set_state_blob(BlobType.VOLATILE, _mutated(raw, MUTATIONS[name]))
    assert target.pending_volatile is None


@pytest.mark.parametrize("raw", [b"", b"not json", b"[]", b'{"format": "vtpm-state"}', b"{" * 100000])
def test_unreadable_volatile_blobs_are_refused(raw: bytes) -> None:
    with pytest.raises(BlobError):
        decode_volatile(raw)


def test_a_volatile_blob_whose_banks_differ_from_the_permanent_state_is_refused_at_init(source) -> None:  # type: ignore[no-untyped-def]
    device, _ = source
    raw = _mutated(device.get_state_blob(BlobType.VOLATILE), lambda d: d["pcrs"].pop(str(int(ALG.SHA1))))
    target = TpmDevice(Tpm())
    target.stop()
    target.set_state_blob(BlobType.VOLATILE, raw)
    with pytest.raises(BlobError):
        target.init()
    assert not target.running


def test_the_lock_excludes_a_second_holder_and_saves_wait_for_it(tmp_path: Path) -> None:
    first, second = StateLock(tmp_path), StateLock(tmp_path)
    first.acquire_or_raise()
    with pytest.raises(StateInUseError):
        second.acquire_or_raise()
    assert (tmp_path / ".lock").stat().st_mode & 0o777 == 0o600
    guard = GuardedStore(PlainStateStore(tmp_path), first)
    guard.save(b"one")
    guard.release(retries=0)
    guard.save(b"two")  # handed over: dropped
    assert (tmp_path / "tpm2-state.json").read_bytes() == b"one" and guard.skipped == 1
    assert second.acquire()
    assert not guard.ensure_locked()
    second.release()
    assert guard.ensure_locked()


def test_control_requests_are_framed_like_swtpm() -> None:
    code = (Ctrl.SET_LOCALITY).to_bytes(4, "big")
    assert swtpm_ctrl.request_size(code[:2]) == 4
    assert swtpm_ctrl.request_size(code) == 5
    header = (Ctrl.SET_STATEBLOB).to_bytes(4, "big") + bytes(4) + (1).to_bytes(4, "big") + (100).to_bytes(4, "big")
    assert swtpm_ctrl.request_size(header) == 116
    device = TpmDevice(Tpm())
    assert swtpm_ctrl.handle(device, Ctrl.SET_LOCALITY, b"\x03\x00\x00\x00").response == bytes(4)  # QEMU's union
    assert device.locality == 3
    assert swtpm_ctrl.handle(device, Ctrl.STOP, b"\x00").response == swtpm_ctrl.TPM_BAD_PARAMETER.to_bytes(4, "big")
    assert swtpm_ctrl.handle(device, Ctrl.INIT, bytes(5)).response == swtpm_ctrl.TPM_BAD_PARAMETER.to_bytes(4, "big")
    get = swtpm_ctrl.handle(device, Ctrl.GET_STATEBLOB, bytes(4) + (2).to_bytes(4, "big") + (10).to_bytes(4, "big"))
    total = int.from_bytes(get.response[8:12], "big")
    assert get.response[:4] == bytes(4) and total == int.from_bytes(get.response[12:16], "big") == len(get.response) - 16
    assert swtpm_ctrl.handle(device, Ctrl.SET_STATEBLOB, header[4:] + bytes(100)).response == \
        swtpm_ctrl.TPM_BAD_ORDINAL.to_bytes(4, "big")  # the TPM runs


def test_the_request_reader_frames_reads_like_swtpm() -> None:
    """One read is one request (QEMU's 4-byte SET_LOCALITY union stays whole); a short request takes only
    the bytes it misses from the next read, the rest starts the next request."""
    reader = swtpm_ctrl.RequestReader()
    locality = (Ctrl.SET_LOCALITY).to_bytes(4, "big") + b"\x02\x00\x00\x00"
    reader.feed(locality)
    assert reader.next_request() == locality and not reader.partial
    header = (Ctrl.SET_STATEBLOB).to_bytes(4, "big") + bytes(4) + (1).to_bytes(4, "big") + (5).to_bytes(4, "big")
    reader.feed(header[:6])
    assert reader.next_request() is None and reader.partial and not reader.in_blob_data
    reader.feed(header[6:] + b"abc")
    assert reader.next_request() is None and reader.in_blob_data and reader.missing == 2
    stop = (Ctrl.STOP).to_bytes(4, "big")
    reader.feed(b"de" + stop)
    assert reader.next_request() == header + b"abcde"
    assert reader.next_request() == stop and reader.next_request() is None and not reader.partial
