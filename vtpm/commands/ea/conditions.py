"""Policy assertions on TPM state (Part 3, section 23): PolicyPCR, PolicyNV, PolicyCounterTimer
and PolicyAuthorizeNV. A trial session skips the checks and only records the digest."""

from __future__ import annotations

from typing import TYPE_CHECKING

import construct as cs

from vtpm.commands.ea.common import POLICY_SESSION, extend, session_of
from vtpm.constants import CC, HT, RC, RH
from vtpm.core import Auth, Command, Response, command, handle_spec
from vtpm.crypto import HASHES, MAX_DIGEST, digest
from vtpm.entities.clock import time_info
from vtpm.entities.nv import check_read_access
from vtpm.entities.pcr import allocation
from vtpm.entities.pcr import pcr_digest as current_pcr_digest
from vtpm.errors import TpmError
from vtpm.marshal.primitives import U16, OneOf
from vtpm.marshal.structures import TPM2B_DIGEST, TPML_PCR_SELECTION, TPMS_TIME_INFO
from vtpm.sessions import AuthSession

if TYPE_CHECKING:
    from vtpm.engine import Tpm

TPM2B_OPERAND = TPM2B_DIGEST


class EO:
    """TPM_EO: how PolicyNV and PolicyCounterTimer compare operand A (TPM data) with B."""

    EQ, NEQ, SIGNED_GT, UNSIGNED_GT, SIGNED_LT, UNSIGNED_LT = range(6)
    SIGNED_GE, UNSIGNED_GE, SIGNED_LE, UNSIGNED_LE, BITSET, BITCLEAR = range(6, 12)


TPM_EO = OneOf(U16, range(12), RC.VALUE)


def _u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def _allocated_only(tpm: Tpm, selection: list[cs.Container]) -> list[tuple[int, bytes]]:
    """The selection with banks that are not allocated cleared, as the digest records it."""
    masks = allocation(tpm)
    return [(s.hash, bytes(b & (masks.get(s.hash, 0) >> (8 * i)) & 0xFF for i, b in enumerate(s.pcrSelect)))
            for s in selection]


@command(CC.PolicyPCR, handles=[POLICY_SESSION], params=[("pcrDigest", TPM2B_DIGEST), ("pcrs", TPML_PCR_SELECTION)])
def policy_pcr(tpm: Tpm, cmd: Command) -> Response:
    """Binds the policy to PCR values; a later PCR change voids the session (pcrUpdateCounter)."""
    session = session_of(tpm, cmd.handles[0])
    selection = _allocated_only(tpm, cmd.params.pcrs)
    pcr_digest = current_pcr_digest(tpm, session.auth_hash, cmd.params.pcrs)  # unallocated banks add nothing
    given = cmd.params.pcrDigest
    counter = tpm.volatile.pcr_update_counter
    if not session.is_trial:
        if session.pcr_counter is not None and session.pcr_counter != counter:
            raise TpmError(RC.PCR_CHANGED)
        if given and given != pcr_digest:
            raise TpmError(RC.VALUE, param=1)
    elif given:
        pcr_digest = given
    marshaled = len(selection).to_bytes(4, "big") + b"".join(
        _u16(bank) + bytes([len(select)]) + select for bank, select in selection
    )
    extend(session, CC.PolicyPCR, marshaled, pcr_digest)
    if not session.is_trial:
        session.pcr_counter = counter
    return Response()


def signed_compare(a: bytes, b: bytes) -> int:
    """-1, 0 or 1 as the reference implementation's SignedCompareB orders two operands.

    Operands of different signs order by sign; two non-negative ones compare as unsigned
    numbers; two negative ones compare as unsigned numbers *reversed*. That last rule is not
    two's-complement order (0x81 counts as greater than 0x82), but it is what libtpms and the
    reference implementation answer, and policies are written against them, so it is kept.
    """
    sign_a = not (a[:1] and a[0] & 0x80)
    sign_b = not (b[:1] and b[0] & 0x80)
    if sign_a != sign_b:
        return 1 if sign_a else -1
    unsigned = (a > b) - (a < b)  # equal lengths: byte order is unsigned order
    return unsigned if sign_a else -unsigned


def condition_holds(operation: int, a: bytes, b: bytes) -> bool:
    """TPM_EO comparison of equally long big-endian operands (A from the TPM, B from the caller)."""
    if operation in (EO.BITSET, EO.BITCLEAR):
        masked = [x & y for x, y in zip(a, b, strict=True)]
        return masked == list(b) if operation == EO.BITSET else not any(masked)
    if operation in (EO.SIGNED_GT, EO.SIGNED_LT, EO.SIGNED_GE, EO.SIGNED_LE):
        order = signed_compare(a, b)
    else:
        order = (a > b) - (a < b)
    return {
        EO.EQ: order == 0, EO.NEQ: order != 0,
        EO.SIGNED_GT: order > 0, EO.UNSIGNED_GT: order > 0, EO.SIGNED_LT: order < 0, EO.UNSIGNED_LT: order < 0,
        EO.SIGNED_GE: order >= 0, EO.UNSIGNED_GE: order >= 0, EO.SIGNED_LE: order <= 0, EO.UNSIGNED_LE: order <= 0,
    }[operation]


def _operand_args(session: AuthSession, operand: bytes, offset: int, operation: int) -> bytes:
    """args = H(operandB || offset || operation), what PolicyNV and PolicyCounterTimer record."""
    return digest(session.auth_hash, operand, _u16(offset), _u16(operation))


CONDITION_PARAMS = [("operandB", TPM2B_OPERAND), ("offset", U16), ("operation", TPM_EO)]


@command(
    CC.PolicyNV,
    handles=[
        handle_spec("authHandle", Auth.USER, types=[HT.NV_INDEX], permanent=(RH.OWNER, RH.PLATFORM)),
        handle_spec("nvIndex", types=[HT.NV_INDEX]),
        POLICY_SESSION,
    ],
    params=CONDITION_PARAMS,
)
def policy_nv(tpm: Tpm, cmd: Command) -> Response:
    """A comparison against NV index data; the index is read with its read authorization."""
    auth, handle, session_handle = cmd.handles
    session = session_of(tpm, session_handle, 3)
    index = tpm.state.nv[handle]
    p = cmd.params
    if not session.is_trial:
        check_read_access(tpm, cmd, auth, index)
        if p.offset > index.data_size:
            raise TpmError(RC.VALUE, param=2)
        if index.data_size - p.offset < len(p.operandB):
            raise TpmError(RC.SIZE, param=1)
        if not condition_holds(p.operation, index.data[p.offset : p.offset + len(p.operandB)], p.operandB):
            raise TpmError(RC.POLICY)
    extend(session, CC.PolicyNV, _operand_args(session, p.operandB, p.offset, p.operation), index.name)
    return Response()


@command(CC.PolicyCounterTimer, handles=[POLICY_SESSION], params=CONDITION_PARAMS)
def policy_counter_timer(tpm: Tpm, cmd: Command) -> Response:
    """A comparison against TPMS_TIME_INFO (time, clock, resetCount, restartCount, safe)."""
    session = session_of(tpm, cmd.handles[0])
    p = cmd.params
    info = TPMS_TIME_INFO.build(time_info(tpm))
    if p.offset > len(info):
        raise TpmError(RC.VALUE, param=2)
    if p.offset + len(p.operandB) > len(info):
        raise TpmError(RC.RANGE)
    if not session.is_trial and not condition_holds(p.operation, info[p.offset : p.offset + len(p.operandB)],
                                                     p.operandB):
        raise TpmError(RC.POLICY)
    extend(session, CC.PolicyCounterTimer, _operand_args(session, p.operandB, p.offset, p.operation))
    return Response()


@command(
    CC.PolicyAuthorizeNV,
    handles=[
        handle_spec("authHandle", Auth.USER, types=[HT.NV_INDEX], permanent=(RH.OWNER, RH.PLATFORM)),
        handle_spec("nvIndex", types=[HT.NV_INDEX]),
        POLICY_SESSION,
    ],
)
def policy_authorize_nv(tpm: Tpm, cmd: Command) -> Response:
    """The policy so far must be the one an NV index holds (a TPMT_HA); then the digest becomes
    H(0...0 || TPM_CC_PolicyAuthorizeNV || index Name) (Part 3 23.22), so that the index's owner can
    change the policy that unlocks an object later, as the EK Credential Profile's PolicyB does."""
    auth, handle, session_handle = cmd.handles
    session = session_of(tpm, session_handle, 3)
    index = tpm.state.nv[handle]
    if not session.is_trial:
        check_read_access(tpm, cmd, auth, index)
        stored = index.data[: min(index.data_size, 2 + MAX_DIGEST)]
        if len(stored) < 2:
            raise TpmError(RC.INSUFFICIENT)
        alg = int.from_bytes(stored[:2], "big")
        if alg not in HASHES:
            raise TpmError(RC.HASH)
        if len(stored) < 2 + HASHES[alg].size:
            raise TpmError(RC.INSUFFICIENT)
        if alg != session.auth_hash:
            raise TpmError(RC.HASH)
        if stored[2 : 2 + HASHES[alg].size] != session.policy_digest:
            raise TpmError(RC.VALUE)
    session.policy_digest = bytes(HASHES[session.auth_hash].size)
    extend(session, CC.PolicyAuthorizeNV, index.name)  # no policyRef step, unlike PolicyAuthorize
    return Response()
