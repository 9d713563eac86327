"""In-process regression tests for the defects tpm2-tools' integration suite found (the same defects
are driven with the real tools in tests/test_vtpm_tools_defects.py)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from support.tpm_helpers import started_client

from vtpm import wire
from vtpm.client import TpmClient
from vtpm.commands.ea.conditions import EO, condition_holds
from vtpm.constants import ALG, CC, NT, RC, RH, ST, TPMA_NV, TPMA_SESSION
from vtpm.marshal.primitives import U16, U32


@pytest.fixture
def client() -> TpmClient:
    return started_client()


rc = wire.response_code


def _hmac_session(client: TpmClient) -> tuple[int, bytes]:
    """An unbound, unsalted HMAC session: its key is empty, so an HMAC is H(key=authValue, ...)."""
    params = wire.tpm2b(bytes(32)) + wire.tpm2b(b"") + b"\x00" + U16.build(ALG.NULL) + U16.build(ALG.SHA256)
    response = client.call(wire.build_command(CC.StartAuthSession, [RH.NULL, RH.NULL], params))
    (handle,), params, _ = response.split(1)
    return handle, params[2:]


def test_a_sequence_objects_name_is_empty_in_cphash(client: TpmClient) -> None:
    """EventSequenceComplete authorized by an HMAC session: cpHash = H(cc || Name(PCR) || Name(sequence)
    || params) with the sequence's Name the Empty Buffer (tpm2 pcrevent of a large file)."""
    start = client.call(wire.build_command(CC.HashSequenceStart, params=wire.tpm2b(b"") + U16.build(ALG.NULL)))
    (sequence,), _, _ = start.split(1)
    session, nonce_tpm = _hmac_session(client)
    nonce = bytes(range(16))
    params = wire.tpm2b(b"event data")
    cp = hashlib.sha256(CC.EventSequenceComplete.to_bytes(4, "big") + (16).to_bytes(4, "big") + params).digest()
    attrs = TPMA_SESSION.CONTINUE_SESSION
    mac = hmac.new(b"", cp + nonce + nonce_tpm + bytes([attrs]), "sha256").digest()
    command = wire.build_command(CC.EventSequenceComplete, [16, sequence], params,
                                 [wire.auth_entry(session, nonce, attrs, mac), wire.PASSWORD_SESSION])
    assert rc(client.transact(command)) == RC.SUCCESS


@pytest.mark.parametrize("a, b, op, holds", [
    (0x81, 0x82, EO.SIGNED_GT, True),   # the reference implementation's order of two negatives
    (0x81, 0x80, EO.SIGNED_LT, True),
    (0x81, 0x82, EO.SIGNED_GE, True),
    (0x81, 0x80, EO.SIGNED_LE, True),
    (0x81, 0x01, EO.SIGNED_LT, True),   # a negative is below a positive
    (0x81, 0x01, EO.SIGNED_GT, False),
    (0x01, 0x02, EO.SIGNED_LT, True),   # two positives in unsigned order
    (0x81, 0x82, EO.UNSIGNED_LT, True),
    (0x81, 0x81, EO.EQ, True),
    (0x81, 0x7E, EO.BITCLEAR, True),
])
def test_policynv_comparisons_as_the_reference(a: int, b: int, op: int, holds: bool) -> None:
    assert condition_holds(op, bytes([a]), bytes([b])) is holds


def test_pin_indices_take_nv_write_and_count(client: TpmClient) -> None:
    index = 0x01000200
    pin_fail = TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.AUTHREAD | TPMA_NV.NO_DA | (NT.PIN_FAIL << 4)
    client.nv_define(index, pin_fail, 8, auth_handle=RH.OWNER, auth=b"pin")
    client.nv_write(index, U32.build(0) + U32.build(2), RH.OWNER)  # pinCount 0, pinLimit 2
    read = lambda password: client.transact(wire.nv_read(index, 8, password=password))  # noqa: E731
    assert rc(read(b"bad")) == RC.BAD_AUTH | 0x900
    assert client.nv_read(index, 8, RH.OWNER) == U32.build(1) + U32.build(2)
    assert rc(read(b"pin")) == RC.SUCCESS  # a success starts the count again
    assert client.nv_read(index, 8, RH.OWNER) == U32.build(0) + U32.build(2)
    read(b"bad")
    read(b"bad")
    assert rc(read(b"pin")) == RC.AUTH_UNAVAILABLE  # pinCount reached pinLimit
    # PIN Fail needs NO_DA; a PIN index's authValue never writes it
    assert rc(client.transact(wire.nv_define_space(0x01000201, pin_fail & ~TPMA_NV.NO_DA, 8))) \
        == RC.ATTRIBUTES | 0x40 | 0x200
    assert rc(client.transact(wire.nv_define_space(0x01000201, pin_fail | TPMA_NV.AUTHWRITE, 8))) \
        == RC.ATTRIBUTES | 0x40 | 0x200


def test_platform_undefines_owner_indices(client: TpmClient) -> None:
    client.nv_define(0x01000300, TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD, 8, auth_handle=RH.OWNER)
    client.nv_undefine(0x01000300, RH.PLATFORM)
    client.nv_define(0x01000301, TPMA_NV.PPWRITE | TPMA_NV.PPREAD | TPMA_NV.PLATFORMCREATE, 8)
    assert rc(client.transact(wire.nv_undefine_space(0x01000301, RH.OWNER))) == RC.NV_AUTHORIZATION


@pytest.mark.parametrize("hierarchy, expected", [
    (RH.LOCKOUT, RC.VALUE | 0x40 | 0x500),
    (0x40000099, RC.VALUE | 0x40 | 0x500),
    (RH.OWNER, RC.TICKET | 0x40 | 0x500),
])
def test_policy_ticket_hierarchy(client: TpmClient, hierarchy: int, expected: int) -> None:
    params = wire.tpm2b(bytes(32)) + wire.tpm2b(b"") + b"\x01" + U16.build(ALG.NULL) + U16.build(ALG.SHA256)
    (session,), _, _ = client.call(wire.build_command(CC.StartAuthSession, [RH.NULL, RH.NULL], params)).split(1)
    ticket = (wire.tpm2b(bytes(8)) + wire.tpm2b(b"") + wire.tpm2b(b"") + wire.tpm2b(b"\x00\x0b" + bytes(32))
              + U16.build(ST.AUTH_SECRET) + U32.build(hierarchy) + wire.tpm2b(bytes(32)))
    assert rc(client.transact(wire.build_command(CC.PolicyTicket, [session], ticket))) == expected
