"""Command semantics in-process: NV attributes and locks, hierarchies, PCR allocation, sequences.

Refusals tried: writing a locked index, reading a read-locked index,
writing a counter with NV_Write, a partial write to a WRITEALL index,
defining an index twice, owner-defining a platform index, undefining a
platform index as owner, Clear while disabled, ClearControl(NO) by lockout,
SequenceComplete on an event sequence, a disabled hierarchy.
"""

from __future__ import annotations

import hashlib

import pytest

from test_vtpm_engine import cmd, pw, rc
from vtpm.constants import ALG, CC, RC, RH, ST, TPMA_NV
from vtpm.engine import Tpm
from vtpm.state import TpmState

H = lambda n: 0x01000000 | n  # noqa: E731


@pytest.fixture
def tpm() -> Tpm:
    engine = Tpm(TpmState.manufacture())
    assert rc(engine.execute(0, cmd(CC.Startup, b"\x00\x00"))) == 0
    return engine


def define(tpm: Tpm, index: int, attributes: int, size: int, auth: bytes = b"", owner: int = RH.OWNER) -> int:
    public = index.to_bytes(4, "big") + ALG.SHA256.to_bytes(2, "big") + attributes.to_bytes(4, "big") + b"\x00\x00" + size.to_bytes(2, "big")
    body = len(auth).to_bytes(2, "big") + auth + len(public).to_bytes(2, "big") + public
    return rc(tpm.execute(0, cmd(CC.NV_DefineSpace, body, handles=(owner,), auth=pw())))


def write(tpm: Tpm, index: int, data: bytes, offset: int = 0, auth_handle: int = RH.OWNER) -> int:
    body = len(data).to_bytes(2, "big") + data + offset.to_bytes(2, "big")
    return rc(tpm.execute(0, cmd(CC.NV_Write, body, handles=(auth_handle, index), auth=pw())))


def read(tpm: Tpm, index: int, size: int, offset: int = 0) -> tuple[int, bytes]:
    r = tpm.execute(0, cmd(CC.NV_Read, size.to_bytes(2, "big") + offset.to_bytes(2, "big"), handles=(RH.OWNER, index), auth=pw()))
    if rc(r):
        return rc(r), b""
    n = int.from_bytes(r[14:16], "big")
    return 0, r[16 : 16 + n]


OWNER_RW = TPMA_NV.OWNERREAD | TPMA_NV.OWNERWRITE


def test_define_rules(tpm: Tpm) -> None:
    assert define(tpm, H(1), OWNER_RW, 16) == 0
    assert define(tpm, H(1), OWNER_RW, 16) == RC.NV_DEFINED
    assert define(tpm, H(2), OWNER_RW | TPMA_NV.PLATFORMCREATE, 16) == RC.ATTRIBUTES | 0x100  # authHandle, as libtpms
    assert define(tpm, H(3), TPMA_NV.OWNERREAD, 16) == RC.ATTRIBUTES | 0x40 | 0x200  # no write method
    assert define(tpm, H(4), OWNER_RW | (1 << 4), 4) == RC.SIZE | 0x40 | 0x200  # counter must be 8 bytes
    assert define(tpm, H(5), OWNER_RW | TPMA_NV.WRITTEN, 8) == RC.ATTRIBUTES | 0x40 | 0x200
    assert define(tpm, H(6), OWNER_RW, 4096) == RC.SIZE | 0x40 | 0x200
    assert define(tpm, H(7), OWNER_RW | (1 << 8), 8) == RC.RESERVED_BITS | 0x40 | 0x200
    assert define(tpm, H(8), OWNER_RW | TPMA_NV.PLATFORMCREATE, 8, owner=RH.PLATFORM) == 0
    r = tpm.execute(0, cmd(CC.NV_UndefineSpace, handles=(RH.OWNER, H(8)), auth=pw()))
    assert rc(r) == RC.NV_AUTHORIZATION
    # TPM2_Clear removes owner indices but keeps platform ones
    assert rc(tpm.execute(0, cmd(CC.Clear, handles=(RH.LOCKOUT,), auth=pw()))) == 0
    assert sorted(tpm.state.nv) == [H(8)]


def test_write_read_and_ranges(tpm: Tpm) -> None:
    assert define(tpm, H(1), OWNER_RW, 8) == 0
    assert read(tpm, H(1), 8) == (RC.NV_UNINITIALIZED, b"")
    assert write(tpm, H(1), b"abcd", 2) == 0
    assert read(tpm, H(1), 8) == (0, b"\xff\xffabcd\xff\xff")  # unwritten bytes read as erased flash
    assert write(tpm, H(1), b"xyz", 6) == RC.NV_RANGE
    assert write(tpm, H(1), b"x", 9) == RC.VALUE | 0x40 | 0x200
    assert read(tpm, H(1), 4, 6)[0] == RC.NV_RANGE
    assert define(tpm, H(2), OWNER_RW | TPMA_NV.WRITEALL, 4) == 0
    assert write(tpm, H(2), b"ab") == RC.NV_RANGE
    assert write(tpm, H(2), b"abcd") == 0


def test_counters_bits_extend(tpm: Tpm) -> None:
    assert define(tpm, H(1), OWNER_RW | (1 << 4), 8) == 0
    assert write(tpm, H(1), bytes(8)) == RC.ATTRIBUTES  # bare code, as the reference answers
    inc = cmd(CC.NV_Increment, handles=(RH.OWNER, H(1)), auth=pw())
    assert rc(tpm.execute(0, inc)) == 0 and rc(tpm.execute(0, inc)) == 0
    assert read(tpm, H(1), 8) == (0, (2).to_bytes(8, "big"))
    # a counter defined after one was deleted starts above it
    assert rc(tpm.execute(0, cmd(CC.NV_UndefineSpace, handles=(RH.OWNER, H(1)), auth=pw()))) == 0
    assert define(tpm, H(1), OWNER_RW | (1 << 4), 8) == 0
    assert rc(tpm.execute(0, inc)) == 0
    assert read(tpm, H(1), 8) == (0, (3).to_bytes(8, "big"))

    assert define(tpm, H(2), OWNER_RW | (2 << 4), 8) == 0
    for bits in (0x1, 0x100):
        assert rc(tpm.execute(0, cmd(CC.NV_SetBits, bits.to_bytes(8, "big"), handles=(RH.OWNER, H(2)), auth=pw()))) == 0
    assert read(tpm, H(2), 8) == (0, (0x101).to_bytes(8, "big"))

    assert define(tpm, H(3), OWNER_RW | (4 << 4), 32) == 0
    for data in (b"one", b"two"):
        body = len(data).to_bytes(2, "big") + data
        assert rc(tpm.execute(0, cmd(CC.NV_Extend, body, handles=(RH.OWNER, H(3)), auth=pw()))) == 0
    expected = hashlib.sha256(hashlib.sha256(bytes(32) + b"one").digest() + b"two").digest()
    assert read(tpm, H(3), 32) == (0, expected)


def test_locks(tpm: Tpm) -> None:
    assert define(tpm, H(1), OWNER_RW | TPMA_NV.WRITEDEFINE, 4) == 0
    lock = cmd(CC.NV_WriteLock, handles=(RH.OWNER, H(1)), auth=pw())
    assert write(tpm, H(1), b"once") == 0
    assert rc(tpm.execute(0, lock)) == 0
    assert write(tpm, H(1), b"twic") == RC.NV_LOCKED
    assert define(tpm, H(2), OWNER_RW | TPMA_NV.WRITE_STCLEAR | TPMA_NV.READ_STCLEAR | TPMA_NV.GLOBALLOCK, 4) == 0
    assert write(tpm, H(2), b"abcd") == 0
    assert rc(tpm.execute(0, cmd(CC.NV_WriteLock, handles=(RH.OWNER, H(2)), auth=pw()))) == 0
    assert rc(tpm.execute(0, cmd(CC.NV_ReadLock, handles=(RH.OWNER, H(2)), auth=pw()))) == 0
    assert read(tpm, H(2), 4)[0] == RC.NV_LOCKED
    assert define(tpm, H(3), OWNER_RW | TPMA_NV.GLOBALLOCK, 4) == 0
    assert rc(tpm.execute(0, cmd(CC.NV_GlobalWriteLock, handles=(RH.OWNER,), auth=pw()))) == 0
    assert write(tpm, H(3), b"abcd") == RC.NV_LOCKED
    assert define(tpm, H(4), OWNER_RW, 4) == 0
    assert rc(tpm.execute(0, cmd(CC.NV_WriteLock, handles=(RH.OWNER, H(4)), auth=pw()))) == RC.ATTRIBUTES | 0x200
    # TPM Restart: stclear locks lapse, the WRITEDEFINE lock of a written index stays
    tpm.execute(0, cmd(CC.Shutdown, b"\x00\x01"))
    tpm.power_cycle()
    assert rc(tpm.execute(0, cmd(CC.Startup, b"\x00\x00"))) == 0
    assert write(tpm, H(1), b"twic") == RC.NV_LOCKED
    assert write(tpm, H(2), b"wxyz") == 0 and read(tpm, H(2), 4) == (0, b"wxyz")
    assert write(tpm, H(3), b"wxyz") == 0


def test_clear_stclear_and_orderly_counter(tpm: Tpm) -> None:
    assert define(tpm, H(1), OWNER_RW | TPMA_NV.CLEAR_STCLEAR, 4) == 0
    assert write(tpm, H(1), b"gone") == 0
    tpm.execute(0, cmd(CC.Shutdown, b"\x00\x00"))
    tpm.power_cycle()
    tpm.execute(0, cmd(CC.Startup, b"\x00\x00"))
    assert read(tpm, H(1), 4)[0] == RC.NV_UNINITIALIZED
    assert not tpm.state.nv[H(1)].attributes & TPMA_NV.WRITTEN


def test_hierarchy_control_and_policy(tpm: Tpm) -> None:
    off = RH.OWNER.to_bytes(4, "big") + b"\x00"
    assert rc(tpm.execute(0, cmd(CC.HierarchyControl, off, handles=(RH.OWNER,), auth=pw()))) == 0
    assert define(tpm, H(1), OWNER_RW, 4) == RC.HIERARCHY | 0x100
    on = RH.OWNER.to_bytes(4, "big") + b"\x01"
    assert rc(tpm.execute(0, cmd(CC.HierarchyControl, on, handles=(RH.PLATFORM,), auth=pw()))) == 0
    assert define(tpm, H(1), OWNER_RW, 4) == 0
    policy = b"\x00\x20" + bytes(range(32)) + ALG.SHA256.to_bytes(2, "big")
    assert rc(tpm.execute(0, cmd(CC.SetPrimaryPolicy, policy, handles=(RH.OWNER,), auth=pw()))) == 0
    assert tpm.state.owner.policy == bytes(range(32))
    short = b"\x00\x10" + bytes(16) + ALG.SHA256.to_bytes(2, "big")
    assert rc(tpm.execute(0, cmd(CC.SetPrimaryPolicy, short, handles=(RH.OWNER,), auth=pw()))) == RC.SIZE | 0x40 | 0x100
    # ClearControl: lockout may only disable; platform may enable again
    assert rc(tpm.execute(0, cmd(CC.ClearControl, b"\x01", handles=(RH.LOCKOUT,), auth=pw()))) == 0
    assert rc(tpm.execute(0, cmd(CC.Clear, handles=(RH.LOCKOUT,), auth=pw()))) == RC.DISABLED
    assert rc(tpm.execute(0, cmd(CC.ClearControl, b"\x00", handles=(RH.LOCKOUT,), auth=pw()))) == RC.AUTH_FAIL | 0x100
    assert rc(tpm.execute(0, cmd(CC.ClearControl, b"\x00", handles=(RH.PLATFORM,), auth=pw()))) == 0
    assert rc(tpm.execute(0, cmd(CC.Clear, handles=(RH.PLATFORM,), auth=pw()))) == 0


def test_pcr_allocate_takes_effect_at_reset(tpm: Tpm) -> None:
    allocation = (2).to_bytes(4, "big") + ALG.SHA1.to_bytes(2, "big") + b"\x03\xff\xff\xff"
    allocation += ALG.SHA384.to_bytes(2, "big") + b"\x03\x00\x00\x00"
    r = tpm.execute(0, cmd(CC.PCR_Allocate, allocation, handles=(RH.PLATFORM,), auth=pw()))
    assert rc(r) == 0 and r[14] == 1  # allocationSuccess (after the 4-byte parameterSize)
    assert ALG.SHA384 in tpm.volatile.pcrs  # unchanged until TPM Reset
    tpm.execute(0, cmd(CC.Shutdown, b"\x00\x00"))
    tpm.power_cycle()
    tpm.execute(0, cmd(CC.Startup, b"\x00\x00"))
    assert sorted(tpm.volatile.pcrs) == [ALG.SHA1, ALG.SHA256, ALG.SHA512]
    caps = tpm.execute(0, cmd(CC.GetCapability, bytes.fromhex("000000050000000000000001")))
    assert bytes.fromhex("000c03000000") in caps and bytes.fromhex("000b03ffffff") in caps


def test_hash_sequences_and_tickets(tpm: Tpm) -> None:
    start = tpm.execute(0, cmd(CC.HashSequenceStart, b"\x00\x03pwd" + ALG.SHA256.to_bytes(2, "big")))
    handle = int.from_bytes(start[10:14], "big")
    update = cmd(CC.SequenceUpdate, b"\x00\x05hello", handles=(handle,), auth=pw(b"pwd"))
    assert rc(tpm.execute(0, update)) == 0
    bad = cmd(CC.SequenceUpdate, b"\x00\x01x", handles=(handle,), auth=pw(b"nope"))
    assert rc(tpm.execute(0, bad)) == RC.BAD_AUTH | 0x900
    done = tpm.execute(0, cmd(CC.SequenceComplete, b"\x00\x06 world" + RH.OWNER.to_bytes(4, "big"), handles=(handle,), auth=pw(b"pwd")))
    assert rc(done) == 0
    digest = done[16:48]
    assert digest == hashlib.sha256(b"hello world").digest()
    ticket_tag = int.from_bytes(done[48:50], "big")
    assert ticket_tag == ST.HASHCHECK and int.from_bytes(done[50:54], "big") == RH.OWNER
    assert handle not in tpm.volatile.objects

    event = tpm.execute(0, cmd(CC.HashSequenceStart, b"\x00\x00" + ALG.NULL.to_bytes(2, "big")))
    ev_handle = int.from_bytes(event[10:14], "big")
    wrong = cmd(CC.SequenceComplete, b"\x00\x00" + RH.NULL.to_bytes(4, "big"), handles=(ev_handle,), auth=pw())
    assert rc(tpm.execute(0, wrong)) == RC.MODE | 0x100
    result = tpm.execute(0, cmd(CC.EventSequenceComplete, b"\x00\x03abc", handles=(16, ev_handle), auth=pw() + pw()))
    assert rc(result) == 0 and hashlib.sha512(b"abc").digest() in result and hashlib.sha1(b"abc").digest() in result


def test_test_parms_and_self_test(tpm: Tpm) -> None:
    rsa2048 = bytes.fromhex("0001" "0010" "0010" "0800" "00000000")
    assert rc(tpm.execute(0, cmd(CC.TestParms, rsa2048))) == 0
    rsa1000 = bytes.fromhex("0001" "0010" "0010" "03e8" "00000000")
    assert rc(tpm.execute(0, cmd(CC.TestParms, rsa1000))) == RC.VALUE | 0x40 | 0x100  # as libtpms
    ecc_p256 = bytes.fromhex("0023" "0010" "0010" "0003" "0010")
    assert rc(tpm.execute(0, cmd(CC.TestParms, ecc_p256))) == 0
    ecc_bn = bytes.fromhex("0023" "0010" "0010" "0010" "0010")
    assert rc(tpm.execute(0, cmd(CC.TestParms, ecc_bn))) == 0  # BN P-256, as libtpms 0.9
    ecc_ecdaa = bytes.fromhex("0023" "0010" "001a" "000b" "0000" "0003" "0010")  # ECDAA: hashAlg and count
    assert rc(tpm.execute(0, cmd(CC.TestParms, ecc_ecdaa))) == 0
    ecc_unknown = bytes.fromhex("0023" "0010" "0010" "0006" "0010")
    assert rc(tpm.execute(0, cmd(CC.TestParms, ecc_unknown))) == RC.CURVE | 0x40 | 0x100
    aes = bytes.fromhex("0025" "0006" "0080" "0043")
    assert rc(tpm.execute(0, cmd(CC.TestParms, aes))) == 0
    assert rc(tpm.execute(0, cmd(CC.SelfTest, b"\x01"))) == 0
    r = tpm.execute(0, cmd(CC.GetTestResult))
    assert rc(r) == 0 and r.endswith(bytes(4))
    assert rc(tpm.execute(0, cmd(CC.StirRandom, b"\x00\x04abcd"))) == 0
