"""The engine in-process: response codes, sessions computed independently, fuzzing.

Malformed inputs tried: every length from 0 to 9, a size field that lies in
both directions, bad tags, a TPM 1.2 tag, unknown command codes, handles of
the wrong type, missing and oversized authorization areas, nonces on password
sessions, trailing bytes, thousands of random and mutated commands.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.clock import FakeClock
from vtpm import wire
from vtpm.constants import ALG, CC, RC, RH, ST, TPMA_NV
from vtpm.crypto import kdfa
from vtpm import engine as engine_module
from vtpm.engine import COMMANDS, Tpm
from vtpm.errors import TpmError
from vtpm.state import TpmState


def cmd(code: int, body: bytes = b"", *, handles: tuple[int, ...] = (), auth: bytes | None = None) -> bytes:
    return wire.build_command(code, handles, body, auth)


pw = wire.password_session  # (password=b"", attributes=continueSession, nonce=b"")
rc = wire.response_code


@pytest.fixture
def tpm(clock: FakeClock) -> Tpm:
    engine = Tpm(TpmState.manufacture(), clock_ms=clock)
    assert rc(engine.execute(0, cmd(CC.Startup, b"\x00\x00"))) == 0
    return engine


def test_header_errors() -> None:
    fresh = Tpm()
    for length in range(10):
        assert rc(fresh.execute(0, bytes(length))) == RC.COMMAND_SIZE
    assert rc(fresh.execute(0, cmd(CC.GetRandom, b"\x00\x08"))) == RC.INITIALIZE
    lying = bytearray(cmd(CC.Startup, b"\x00\x00"))
    lying[5] += 1
    assert rc(fresh.execute(0, bytes(lying))) == RC.COMMAND_SIZE
    bad_tag = bytearray(cmd(CC.Startup, b"\x00\x00"))
    bad_tag[1] = 0x03
    assert rc(fresh.execute(0, bytes(bad_tag))) == RC.BAD_TAG
    tpm12 = bytes.fromhex("00c1000000140000f1000000000000000000")
    assert fresh.execute(0, tpm12[:10]) == bytes.fromhex("80010000000a0000001e")  # a TPM 2.0 header (OVMF)
    assert rc(fresh.execute(0, cmd(0x1234))) == RC.COMMAND_CODE
    assert rc(fresh.execute(0, cmd(CC.Startup, b"\x00\x00"))) == 0
    assert rc(fresh.execute(0, cmd(CC.Startup, b"\x00\x00"))) == RC.INITIALIZE


def test_format1_numbers(tpm: Tpm) -> None:
    # parameter 2 of NV_Write (the offset) missing: TPM_RC_INSUFFICIENT + parameter 2
    r = tpm.execute(0, cmd(CC.NV_Write, b"\x00\x01A", handles=(RH.OWNER, 0x01000001), auth=pw()))
    assert rc(r) == RC.HANDLE | (2 << 8)  # the index does not exist: handle 2
    # a PCR handle where NV_Write needs an NV auth handle: TPM_RC_VALUE + handle 1
    r = tpm.execute(0, cmd(CC.NV_Write, b"\x00\x00\x00\x00", handles=(5, 0x01000001), auth=pw()))
    assert rc(r) == RC.VALUE | (1 << 8)
    # GetRandom with a truncated parameter: TPM_RC_INSUFFICIENT + P + 1
    assert rc(tpm.execute(0, cmd(CC.GetRandom, b"\x00"))) == RC.INSUFFICIENT | 0x40 | 0x100
    # trailing bytes after the last parameter
    assert rc(tpm.execute(0, cmd(CC.GetRandom, b"\x00\x08\x00"))) == RC.SIZE
    # a password session with a nonce: TPM_RC_NONCE + session 1
    r = tpm.execute(0, cmd(CC.PCR_Reset, handles=(16,), auth=pw(nonce=b"x" * 16)))
    assert rc(r) == RC.NONCE | 0x800 | 0x100
    # authorization missing
    assert rc(tpm.execute(0, cmd(CC.PCR_Reset, handles=(16,)))) == RC.AUTH_MISSING
    # an unknown session handle: TPM_RC_REFERENCE_S0
    bogus = (0x02000123).to_bytes(4, "big") + b"\x00\x00\x01\x00\x00"
    assert rc(tpm.execute(0, cmd(CC.PCR_Reset, handles=(16,), auth=bogus))) == RC.REFERENCE_S0
    # an authorization area that claims more bytes than there are: TPM_RC_SIZE, as libtpms answers
    raw = bytearray(cmd(CC.PCR_Reset, handles=(16,), auth=pw()))
    raw[17] = 0x40
    assert rc(tpm.execute(0, bytes(raw))) == RC.SIZE
    # a password session that authorizes no handle: TPM_RC_HANDLE + session 1
    assert rc(tpm.execute(0, cmd(CC.GetRandom, b"\x00\x08", auth=pw()))) == RC.HANDLE | 0x800 | 0x100
    # an index without AUTHREAD cannot authorize its own read: TPM_RC_AUTH_UNAVAILABLE
    public = (0x01000077).to_bytes(4, "big") + ALG.SHA256.to_bytes(2, "big") + (0x00020002).to_bytes(4, "big") + b"\x00\x00\x00\x04"
    body = b"\x00\x00" + len(public).to_bytes(2, "big") + public
    assert rc(tpm.execute(0, cmd(CC.NV_DefineSpace, body, handles=(RH.OWNER,), auth=pw()))) == 0
    read_self = cmd(CC.NV_Read, b"\x00\x04\x00\x00", handles=(0x01000077, 0x01000077), auth=pw())
    assert rc(tpm.execute(0, read_self)) == RC.AUTH_UNAVAILABLE
    # a truncated handle area names the handle
    assert rc(tpm.execute(0, cmd(CC.NV_ReadPublic, b"\x01\x00"))) == RC.INSUFFICIENT | 0x100
    # PCR 0 cannot be reset from locality 0
    assert rc(tpm.execute(0, cmd(CC.PCR_Reset, handles=(0,), auth=pw()))) == RC.LOCALITY
    # PCR 20 may be reset from locality 2 only among 0-2
    assert rc(tpm.execute(2, cmd(CC.PCR_Reset, handles=(20,), auth=pw()))) == 0
    assert TpmError(RC.HASH, param=3).code == 0x3C3


def test_pcr_update_counter_and_drtm_pcrs(tpm: Tpm) -> None:
    selection = (1).to_bytes(4, "big") + ALG.SHA256.to_bytes(2, "big") + b"\x03\x00\x00\x18"  # PCRs 19, 20
    r = tpm.execute(0, cmd(CC.PCR_Read, selection))
    counter = int.from_bytes(r[10:14], "big")
    assert counter == 20  # every PCR but 16, 21, 22, 23 counted at Startup
    assert r.endswith(b"\xff" * 32)  # DRTM PCRs start as all ones
    extend = (1).to_bytes(4, "big") + ALG.SHA256.to_bytes(2, "big") + bytes(32)
    tpm.execute(0, cmd(CC.PCR_Extend, extend, handles=(5,), auth=pw()))
    tpm.execute(0, cmd(CC.PCR_Extend, extend, handles=(16,), auth=pw()))
    assert int.from_bytes(tpm.execute(0, cmd(CC.PCR_Read, selection))[10:14], "big") == 21


def test_clock(tpm: Tpm, clock: FakeClock) -> None:
    def read() -> tuple[int, int]:
        r = tpm.execute(0, cmd(CC.ReadClock))
        return int.from_bytes(r[10:18], "big"), int.from_bytes(r[18:26], "big")

    t0, c0 = read()
    clock.ms += 5000
    t1, c1 = read()
    assert t1 - t0 == 5000 and c1 - c0 == 5000
    target = c1 + 1_000_000
    assert rc(tpm.execute(0, cmd(CC.ClockSet, target.to_bytes(8, "big"), handles=(RH.OWNER,), auth=pw()))) == 0
    assert read()[1] == target
    back = (target - 1).to_bytes(8, "big")
    assert rc(tpm.execute(0, cmd(CC.ClockSet, back, handles=(RH.OWNER,), auth=pw()))) == RC.VALUE | 0x40 | 0x100


def test_dictionary_attack_heals_over_time(tpm: Tpm, clock: FakeClock) -> None:
    public = (0x01000010).to_bytes(4, "big") + ALG.SHA256.to_bytes(2, "big") + (0x00040004).to_bytes(4, "big") + b"\x00\x00" + b"\x00\x04"
    define = b"\x00\x03abc" + len(public).to_bytes(2, "big") + public
    assert rc(tpm.execute(0, cmd(CC.NV_DefineSpace, define, handles=(RH.OWNER,), auth=pw()))) == 0
    read = cmd(CC.NV_Read, b"\x00\x04\x00\x00", handles=(0x01000010, 0x01000010), auth=pw(b"bad"))
    for _ in range(3):
        assert rc(tpm.execute(0, read)) == RC.AUTH_FAIL | 0x800 | 0x100
    assert rc(tpm.execute(0, read)) == RC.LOCKOUT
    clock.ms += 1000 * 1000  # one recovery interval heals one failure
    assert rc(tpm.execute(0, read)) == RC.AUTH_FAIL | 0x800 | 0x100
    good = cmd(CC.NV_Read, b"\x00\x04\x00\x00", handles=(0x01000010, 0x01000010), auth=pw(b"abc"))
    assert rc(tpm.execute(0, good)) == RC.LOCKOUT
    assert rc(tpm.execute(0, cmd(CC.DictionaryAttackLockReset, handles=(RH.LOCKOUT,), auth=pw()))) == 0
    assert rc(tpm.execute(0, good)) == RC.NV_UNINITIALIZED
    # a failed lockoutAuth locks lockoutAuth itself
    assert rc(tpm.execute(0, cmd(CC.DictionaryAttackLockReset, handles=(RH.LOCKOUT,), auth=pw(b"x")))) == RC.AUTH_FAIL | 0x900
    assert rc(tpm.execute(0, cmd(CC.DictionaryAttackLockReset, handles=(RH.LOCKOUT,), auth=pw()))) == RC.LOCKOUT


def _start_session(tpm: Tpm, symmetric: bytes, auth_hash: int = ALG.SHA256) -> tuple[int, bytes, bytes]:
    nonce_caller = os.urandom(32)
    body = len(nonce_caller).to_bytes(2, "big") + nonce_caller + b"\x00\x00" + b"\x00" + symmetric + auth_hash.to_bytes(2, "big")
    r = tpm.execute(0, cmd(CC.StartAuthSession, body, handles=(RH.NULL, RH.NULL)))
    assert rc(r) == 0, hex(rc(r))
    handle = int.from_bytes(r[10:14], "big")
    size = int.from_bytes(r[14:16], "big")
    return handle, r[16 : 16 + size], nonce_caller


def test_hmac_session_with_cfb_parameter_encryption(tpm: Tpm) -> None:
    """An HMAC session and AES-CFB parameter encryption computed here from Part 1, not by the engine."""
    aes_cfb = ALG.AES.to_bytes(2, "big") + (128).to_bytes(2, "big") + ALG.CFB.to_bytes(2, "big")
    handle, nonce_tpm, _ = _start_session(tpm, aes_cfb)
    assert handle >> 24 == 0x02 and len(nonce_tpm) == 32

    nonce_caller = os.urandom(32)
    attrs = 0x01 | 0x40  # continueSession | encrypt (response)
    code = CC.GetRandom
    params = b"\x00\x10"
    cp = hashlib.sha256(code.to_bytes(4, "big") + params).digest()
    key = b""  # unbound, unsalted, no auth value involved (GetRandom has no handles)
    # An empty HMAC key with a non-empty caller HMAC: the HMAC is computed with the empty key.
    auth_hmac = hmac.new(key, cp + nonce_caller + nonce_tpm + bytes([attrs]), hashlib.sha256).digest()
    area = handle.to_bytes(4, "big") + len(nonce_caller).to_bytes(2, "big") + nonce_caller + bytes([attrs])
    area += len(auth_hmac).to_bytes(2, "big") + auth_hmac
    r = tpm.execute(0, cmd(code, params, auth=area))
    assert rc(r) == 0
    param_size = int.from_bytes(r[10:14], "big")
    out = r[14 : 14 + param_size]
    auth = r[14 + param_size :]
    new_nonce = auth[2 : 2 + int.from_bytes(auth[:2], "big")]
    assert auth[2 + len(new_nonce)] == attrs
    resp_hmac = auth[2 + len(new_nonce) + 3 :]
    rp = hashlib.sha256(bytes(4) + code.to_bytes(4, "big") + out).digest()
    assert resp_hmac == hmac.new(b"", rp + new_nonce + nonce_caller + bytes([attrs]), hashlib.sha256).digest()
    material = kdfa(ALG.SHA256, b"", b"CFB", new_nonce, nonce_caller, (16 + 16) * 8)
    from vtpm.sessions import CFB

    dec = Cipher(algorithms.AES(material[:16]), CFB(material[16:])).decryptor()
    plain = dec.update(out[2:]) + dec.finalize()
    assert len(plain) == 16 and out[:2] == b"\x00\x10"

    # a wrong HMAC on an unassigned session is refused and nothing is counted
    area_bad = area[:-1] + bytes([area[-1] ^ 1])
    assert rc(tpm.execute(0, cmd(code, params, auth=area_bad))) == RC.AUTH_FAIL | 0x800 | 0x100
    # continueSession clear: the session is flushed after use
    flush = cmd(CC.FlushContext, handle.to_bytes(4, "big"))
    assert rc(tpm.execute(0, flush)) == 0
    assert rc(tpm.execute(0, flush)) == RC.HANDLE | 0x40 | 0x100


def test_start_auth_session_refusals(tpm: Tpm) -> None:
    def body(nonce: bytes, salt: bytes = b"", kind: int = 0, sym: bytes = b"\x00\x10", alg: int = ALG.SHA256) -> bytes:
        return len(nonce).to_bytes(2, "big") + nonce + len(salt).to_bytes(2, "big") + salt + bytes([kind]) + sym + alg.to_bytes(2, "big")

    start = lambda b: rc(tpm.execute(0, cmd(CC.StartAuthSession, b, handles=(RH.NULL, RH.NULL))))  # noqa: E731
    assert start(body(b"short")) == RC.SIZE | 0x40 | 0x100
    assert start(body(os.urandom(16), salt=b"salt")) == RC.VALUE | 0x40 | 0x200
    assert start(body(os.urandom(16), kind=2)) == RC.VALUE | 0x40 | 0x300
    assert start(body(os.urandom(16), sym=b"\x00\x06\x00\x80\x00\x42")) == RC.MODE | 0x40 | 0x400  # AES-CBC
    assert start(body(os.urandom(16), alg=0x1234)) == RC.HASH | 0x40 | 0x500
    assert start(body(os.urandom(16), kind=1)) == 0  # a policy session


def test_every_command_is_registered_once_with_attributes() -> None:
    from vtpm.commands.capability import command_attributes

    codes = sorted(COMMANDS)
    assert CC.NV_Write in codes and CC.StartAuthSession in codes
    for code in codes:
        attrs = command_attributes(code)
        assert attrs & 0xFFFF == code
        assert (attrs >> 25) & 7 == len(COMMANDS[code].handles)


def _well_formed(response: bytes) -> None:
    assert len(response) >= 10
    assert int.from_bytes(response[6:10], "big") != RC.FAILURE, "an internal error escaped as TPM_RC_FAILURE"
    assert int.from_bytes(response[2:6], "big") == len(response)
    assert int.from_bytes(response[0:2], "big") in (ST.NO_SESSIONS, ST.SESSIONS)  # never a TPM 1.2 tag


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    tpm = _fuzz_tpm()
    _well_formed(tpm.execute(0, data))
    # with a consistent header too, so the body parsers get exercised
    if len(data) >= 4:
        framed = struct.pack(">HI", ST.SESSIONS if data[0] & 1 else ST.NO_SESSIONS, len(data) + 6) + data
        _well_formed(tpm.execute(data[1] % 5, framed))


_FUZZ: list[Tpm] = []


def _fuzz_tpm() -> Tpm:
    if not _FUZZ:
        engine = Tpm()
        engine.execute(0, cmd(CC.Startup, b"\x00\x00"))
        _FUZZ.append(engine)
    return _FUZZ[0]


VALID = [
    cmd(CC.GetRandom, b"\x00\x20"),
    cmd(CC.PCR_Read, bytes.fromhex("00000002000403ffffff000b03ffffff")),
    cmd(CC.PCR_Extend, (1).to_bytes(4, "big") + bytes.fromhex("000b") + bytes(32), handles=(16,), auth=pw()),
    cmd(CC.GetCapability, bytes.fromhex("000000060000010000000040")),
    cmd(CC.Hash, b"\x00\x05hello" + bytes.fromhex("000b40000001")),
    cmd(CC.NV_DefineSpace, b"\x00\x00" + b"\x00\x0e" + bytes.fromhex("0100002a000b0006000600000010"), handles=(RH.OWNER,), auth=pw()),
    cmd(CC.NV_Write, b"\x00\x04abcd\x00\x00", handles=(RH.OWNER, 0x0100002A), auth=pw()),
    cmd(CC.NV_Read, b"\x00\x04\x00\x00", handles=(RH.OWNER, 0x0100002A), auth=pw()),
    cmd(CC.NV_ReadPublic, handles=(0x0100002A,)),
    cmd(CC.HashSequenceStart, b"\x00\x00\x00\x0b"),
    cmd(CC.StartAuthSession, b"\x00\x10" + bytes(16) + b"\x00\x00\x00\x00\x10\x00\x0b", handles=(RH.NULL, RH.NULL)),
    cmd(CC.ReadClock),
    cmd(CC.TestParms, bytes.fromhex("00010010001000100800 00000000".replace(" ", ""))),
]


def test_fuzz_mutated_valid_commands() -> None:
    """Thousands of single- and multi-byte mutations, truncations and extensions of valid commands."""
    tpm = _fuzz_tpm()
    rng = random.Random(1234)
    count = 0
    for _ in range(400):
        for original in VALID:
            data = bytearray(original)
            kind = rng.randrange(4)
            if kind == 0:
                for _ in range(rng.randint(1, 4)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
            elif kind == 1:
                data = data[: rng.randrange(len(data))]
                data[2:6] = len(data).to_bytes(4, "big") if len(data) >= 6 else data[2:6]
            elif kind == 2:
                data += os.urandom(rng.randint(1, 40))
                data[2:6] = len(data).to_bytes(4, "big")
            else:
                position = rng.randrange(10, len(data)) if len(data) > 10 else 0
                data[position:position] = os.urandom(rng.randint(1, 8))
                data[2:6] = len(data).to_bytes(4, "big")
            _well_formed(tpm.execute(rng.randrange(5), bytes(data)))
            count += 1
            # flush transient objects and sessions so the fuzzing keeps reaching new code
            if len(tpm.volatile.objects) > 2:
                tpm.volatile.objects.clear()
            if len(tpm.volatile.sessions) > 20:
                tpm.volatile.sessions.clear()
    assert count == 400 * len(VALID)
    assert rc(tpm.execute(0, VALID[0])) == 0  # still serving



def test_password_short_path_matches_the_generic_authorization(clock: FakeClock,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """One password session for one authorized handle skips the generic authorization context:
    every response, and the state after the script, are what ``authorize`` gives."""
    da_index, no_da_index, owner_only = 0x01000310, 0x01000311, 0x01000312
    read_write = TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.AUTHWRITE | TPMA_NV.AUTHREAD
    sha256 = [(ALG.SHA256, bytes(32))]
    script = [
        (wire.nv_define_space(da_index, read_write, 8, auth=b"secret"), RC.SUCCESS),
        (wire.nv_define_space(no_da_index, read_write | TPMA_NV.NO_DA, 8, auth=b"pin"), RC.SUCCESS),
        (wire.nv_define_space(owner_only, TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.NO_DA, 8), RC.SUCCESS),
        (wire.nv_write(da_index, b"12345678", password=b"secret"), RC.SUCCESS),
        (wire.nv_read(da_index, 8, password=b"secret"), RC.SUCCESS),
        (wire.nv_read(da_index, 8, password=b"wrong"), RC.AUTH_FAIL | 0x800 | 0x100),  # counted as a DA failure
        (wire.nv_read(da_index, 8, password=b"secret\x00\x00"), RC.SUCCESS),  # trailing zeros do not count
        (wire.nv_write(no_da_index, b"abc", password=b"nope"), RC.BAD_AUTH | 0x800 | 0x100),
        (wire.nv_read(owner_only, 8), RC.AUTH_UNAVAILABLE),  # no AUTHREAD
        (wire.nv_read(owner_only, 8, auth_handle=RH.OWNER), RC.NV_UNINITIALIZED),
        (wire.pcr_extend(16, sha256), RC.SUCCESS),
        (wire.pcr_extend(16, sha256, attributes=0), RC.SUCCESS),  # continueSession clear: echoed set
        (wire.pcr_extend(16, [(ALG.SHA256, bytes(31))]), RC.INSUFFICIENT | 0x40 | 0x100),  # after authorization
        (wire.pcr_read([(ALG.SHA256, [16])]), RC.SUCCESS),
    ]
    manufactured = TpmState.manufacture().to_bytes()

    def run() -> tuple[list[bytes], dict[str, object]]:
        engine = Tpm(TpmState.from_bytes(manufactured), clock_ms=clock)
        engine.execute(0, wire.STARTUP_CLEAR)
        responses = [engine.execute(0, command) for command, _ in script]
        state = json.loads(engine.state.to_bytes())["state"]
        del state["commit_nonce"]  # drawn afresh at every Startup
        return responses, state

    taken: list[int] = []
    original = engine_module.authorize_password
    monkeypatch.setattr(engine_module, "authorize_password", lambda *args: taken.append(1) or original(*args))
    short_responses, short_state = run()
    assert len(taken) == len(script) - 1  # every command but PCR_Read took the short path
    monkeypatch.setattr(engine_module, "_one_password", lambda sessions, auth_handles: False)
    generic_responses, generic_state = run()
    assert [rc(r) for r in short_responses] == [expected for _, expected in script]
    assert short_responses == generic_responses
    assert short_state == generic_state


def test_kept_pcr_read_follows_a_new_allocation(clock: FakeClock) -> None:
    """A PCR_Read and a PCR_Extend kept with what they derived from their parameters (Command.memo) work
    on the PCR banks and allocation in force: after a TPM Reset, and after PCR_Allocate and a TPM Reset,
    the same bytes do what a fresh parse does."""
    read = wire.pcr_read([(ALG.SHA256, [1, 16]), (ALG.SHA1, [16])])
    extend = wire.pcr_extend(16, [(ALG.SHA256, bytes(range(32)))])
    engine = Tpm(TpmState.manufacture(), clock_ms=clock)
    engine.execute(0, wire.STARTUP_CLEAR)
    engine.execute(0, extend)
    before = engine.execute(0, read)
    assert engine.execute(0, read) == before and read in engine._parsed and extend in engine._parsed

    def reset() -> None:
        engine.execute(0, wire.SHUTDOWN_CLEAR)
        engine.power_cycle()
        engine.execute(0, wire.STARTUP_CLEAR)

    reset()  # new PCR banks: the kept PCR_Read and PCR_Extend work on them
    initial = Tpm(engine.state, clock_ms=clock)
    initial.execute(0, wire.STARTUP_CLEAR)
    assert engine.execute(0, read) == initial.execute(0, read) != before
    engine.execute(0, extend)
    assert engine.execute(0, read) == before
    assert rc(engine.execute(0, wire.pcr_allocate({ALG.SHA256: [0, 1, 17], ALG.SHA1: list(range(24))}))) == RC.SUCCESS
    reset()
    engine.execute(0, extend)
    after = engine.execute(0, read)
    fresh = Tpm(engine.state, clock_ms=clock)
    fresh.execute(0, wire.STARTUP_CLEAR)
    fresh.execute(0, extend)
    assert after == fresh.execute(0, read)
    assert after != before and engine.execute(0, read) == after


def _two_bank_extends() -> list[bytes]:
    """PCR_Extends of PCR 16 in one shape: sha256 then sha1, new digests (parameters built from the kept
    layout, CommandSpec.reparse), then the same length with a count, an algorithm or the order changed
    (parsed anew: TPM_RC_SIZE, TPM_RC_HASH, or another plan), a PCR_Read after each."""
    def extend(sha256: bytes, sha1: bytes) -> bytes:
        return wire.pcr_extend(16, [(ALG.SHA256, sha256), (ALG.SHA1, sha1)])

    first = extend(bytes(32), bytes(20))
    params_at = len(first) - (4 + 2 + 32 + 2 + 20)
    one_entry = first[:params_at] + (1).to_bytes(4, "big") + first[params_at + 4:]  # then 22 bytes too many
    bad_second = first[:params_at + 38] + (0x0099).to_bytes(2, "big") + first[params_at + 40:]
    sha256_first_alg_second = first[:params_at + 4] + ALG.SHA1.to_bytes(2, "big") + first[params_at + 6:]
    read = wire.pcr_read([(ALG.SHA256, [16]), (ALG.SHA1, [16])])
    commands = [first, extend(b"\x01" * 32, b"\x02" * 20), extend(b"\x03" * 32, b"\x04" * 20), one_entry,
                bad_second, sha256_first_alg_second, extend(b"\x05" * 32, b"\x06" * 20)]
    return [item for command in commands for item in (command, read)]


def test_repeated_commands_answer_as_when_parsed_anew(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A command whose bytes come again reuses their parse (engine.REPEATABLE): every response, and
    the state after the script, are what parsing every command anew gives, through errors before
    Startup, a wrong password (never kept), locality changes and a DA lockout in between."""
    index = 0x01000320
    read_write = TPMA_NV.AUTHWRITE | TPMA_NV.AUTHREAD | TPMA_NV.OWNERREAD | TPMA_NV.OWNERWRITE
    sha256 = [(ALG.SHA256, bytes(range(32)))]
    read, extend = wire.pcr_read([(ALG.SHA256, [16, 17])]), wire.pcr_extend(16, sha256)
    nv_read = wire.nv_read(index, 8, auth_handle=RH.OWNER)
    script = [
        (0, read), (0, read), (0, wire.STARTUP_CLEAR), (0, read), (0, extend), (0, extend), (0, read),
        (0, nv_read), (0, wire.nv_define_space(index, read_write, 8, auth=b"pin")), (0, nv_read),
        (0, wire.nv_write(index, b"12345678", auth_handle=RH.OWNER)), (0, nv_read), (0, nv_read),
        (0, wire.nv_write(index, b"abcdefgh", password=b"pin")), (0, wire.nv_read(index, 8, password=b"bad")),
        (0, wire.nv_read(index, 8, password=b"pin")), (0, wire.nv_read(index, 8, password=b"pin")),
        (0, wire.nv_read(index, 9, auth_handle=RH.OWNER)), (0, wire.nv_read(index, 9, auth_handle=RH.OWNER)),
        (3, extend), (3, extend), (4, wire.pcr_extend(17, sha256)), (0, wire.pcr_extend(17, sha256)), (4, read),
        (0, wire.get_random(8)), (0, wire.get_random(8)), (0, wire.nv_write(index, b"abcdefgh", offset=1)),
        (0, wire.nv_write(index, b"abcdefgh", offset=1)), (0, wire.SHUTDOWN_CLEAR), (0, read), (0, extend),
    ]
    script += [(0, wire.nv_read(index, 8, password=b"bad"))] * 4 + [(0, wire.nv_read(index, 8, password=b"pin"))] * 2
    # the same shape (header, handles, sessions) with new parameters: only those are parsed anew
    script += [(0, wire.STARTUP_CLEAR), *((0, wire.pcr_extend(16, [(ALG.SHA256, bytes([n]) * 32)])) for n in range(3)),
               (3, wire.pcr_extend(16, [(ALG.SHA256, bytes(32))])), (0, wire.pcr_extend(16, [(ALG.SHA1, bytes(20))])),
               (0, wire.pcr_extend(16, [(0x0099, bytes(32))])), (0, wire.pcr_read([(ALG.SHA256, [1, 2])])),
               *((0, command) for command in _two_bank_extends()),
               (0, wire.nv_read(index, 8, auth_handle=RH.OWNER)), (0, wire.nv_read(index, 4, 2, auth_handle=RH.OWNER)),
               (0, wire.nv_read(index, 4, 5, auth_handle=RH.OWNER)), (0, wire.nv_read(index, 1000, auth_handle=RH.OWNER)),
               (0, wire.get_random(4)), (0, wire.get_random(64)),
               (0, wire.nv_undefine_space(index)), (0, wire.nv_read(index, 8, auth_handle=RH.OWNER)),
               (0, wire.nv_read(index, 4, 2, auth_handle=RH.OWNER))]  # a kept NV_Read of an index gone
    # a kept NV_Read keeps its answer (Command.memo) only while the index, its data and attributes stand
    locked = 0x01000321
    read_locked = wire.nv_read(locked, 4, auth_handle=RH.OWNER)
    owner = wire.password_session()
    script += [(0, wire.nv_define_space(locked, TPMA_NV.OWNERREAD | TPMA_NV.OWNERWRITE | TPMA_NV.READ_STCLEAR, 4)),
               (0, wire.nv_write(locked, b"wxyz", auth_handle=RH.OWNER)), (0, read_locked), (0, read_locked),
               (0, wire.nv_write(locked, b"WXYZ", auth_handle=RH.OWNER)), (0, read_locked),
               (0, wire.build_command(CC.NV_ReadLock, [RH.OWNER, locked], sessions=owner)), (0, read_locked),
               (0, wire.nv_undefine_space(locked)),
               (0, wire.nv_define_space(locked, TPMA_NV.OWNERREAD | TPMA_NV.OWNERWRITE, 4)),
               (0, wire.nv_write(locked, b"4321", auth_handle=RH.OWNER)), (0, read_locked),
               (0, wire.build_command(CC.HierarchyControl, [RH.OWNER], struct.pack(">IB", RH.OWNER, 0), owner)),
               (0, read_locked)]
    manufactured = TpmState.manufacture().to_bytes()

    def run() -> tuple[list[bytes], dict[str, object], int]:
        engine = Tpm(TpmState.from_bytes(manufactured), clock_ms=clock)
        engine.random = lambda n: bytes(n)  # type: ignore[method-assign]
        responses = [engine.execute(locality, command) for locality, command in script]
        state = json.loads(engine.state.to_bytes())["state"]
        del state["commit_nonce"]  # drawn afresh at every Startup
        return responses, state, len(engine._parsed)

    reused: list[bool] = []
    original = Tpm._execute_parsed
    monkeypatch.setattr(Tpm, "_execute_parsed", lambda self, parsed, parse=None, kept=None:
                        reused.append(parse is not None) or original(self, parsed, parse, kept))
    cached_responses, cached_state, kept = run()
    assert reused.count(False) >= 10 and reused.count(True) >= 8 and kept >= 1
    monkeypatch.setattr(engine_module, "REPEATABLE", frozenset())
    fresh_responses, fresh_state, none_kept = run()
    assert none_kept == 0
    assert [rc(r) for r in cached_responses] == [rc(r) for r in fresh_responses]
    assert cached_responses == fresh_responses
    assert cached_state == fresh_state
    assert rc(cached_responses[0]) == RC.INITIALIZE and rc(cached_responses[1]) == RC.INITIALIZE
    answers = [r for (_, command), r in zip(script, cached_responses) if command == read_locked]
    data = [wire.parse_response(r).parameters()[2:] if rc(r) == RC.SUCCESS else rc(r) for r in answers]
    # locked until the next Startup(CLEAR); redefined; then its hierarchy disabled (handle 1: TPM_RC_1 = 0x100)
    assert data == [b"wxyz", b"wxyz", b"WXYZ", RC.NV_LOCKED, b"4321", RC.HIERARCHY + 0x100]


def test_a_command_matched_by_shape_is_kept_only_within_the_size_bound(clock: FakeClock) -> None:
    """A command longer than PARSED_MAX_BYTES is never kept, not even through the shape of a shorter
    kept command with the same handles and session: a shape holds the header, commandSize included,
    so only a command as long as the kept one matches it."""
    index = 0x01000321
    engine = Tpm(TpmState.manufacture(), clock_ms=clock)
    engine.execute(0, wire.STARTUP_CLEAR)
    attributes = TPMA_NV.OWNERREAD | TPMA_NV.OWNERWRITE
    assert rc(engine.execute(0, wire.nv_define_space(index, attributes, 512))) == RC.SUCCESS
    small, large = wire.nv_write(index, b"s" * 8, auth_handle=RH.OWNER), wire.nv_write(index, b"L" * 400,
                                                                                      auth_handle=RH.OWNER)
    assert len(small) <= engine_module.PARSED_MAX_BYTES < len(large)
    assert rc(engine.execute(0, small)) == RC.SUCCESS and small in engine._parsed
    assert rc(engine.execute(0, large)) == RC.SUCCESS and large not in engine._parsed
    read = engine.execute(0, wire.nv_read(index, 400, auth_handle=RH.OWNER))
    assert rc(read) == RC.SUCCESS and b"L" * 400 in read
