"""Policy assertions (Part 3, section 23; Part 1, 19.7): each one extends a policy session.

Every assertion folds itself into the session's digest,
policyDigest_new = H(policyDigest_old || TPM_CC || arguments), so an entity's
authPolicy names the exact list of assertions that unlocks it. A policy session
also records what each assertion requires of the command it will authorize
(command code, locality, cpHash, PCR counter, ...); vtpm.authorization checks
those when the session is used. A trial session only computes the digest:
checks that need real state (PCR values, NV contents, time) are skipped.
PolicySecret lives in vtpm.commands.policy_secret.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import construct as cs

from vtpm.constants import CC, HT, RC, RH
from vtpm.core import COMMANDS, Auth, Command, Response, command, handle_spec
from vtpm.crypto import HASHES, digest
from vtpm.entities.clock import time_info
from vtpm.entities.nv import check_read_access
from vtpm.entities.pcr import pcr_digest as current_pcr_digest
from vtpm.errors import TpmError
from vtpm.marshal.primitives import U8, U16, U32, OneOf
from vtpm.marshal.structures import TPM2B_DIGEST, TPM2B_NAME, TPML_PCR_SELECTION, TPMS_TIME_INFO
from vtpm.sessions import AuthSession

if TYPE_CHECKING:
    from vtpm.engine import Tpm

POLICY_SESSION = handle_spec("policySession", types=[HT.POLICY_SESSION])
TPMI_YES_NO = OneOf(U8, [0, 1], RC.VALUE)
TPM2B_OPERAND = TPM2B_DIGEST
# TPML_DIGEST as PolicyOR takes it: two to eight digests (TPM_RC_SIZE otherwise)
TPML_DIGEST_OR = cs.PrefixedArray(OneOf(U32, range(2, 9), RC.SIZE), TPM2B_DIGEST)


class EO:
    """TPM_EO: how PolicyNV and PolicyCounterTimer compare operand A (TPM data) with B."""

    EQ, NEQ, SIGNED_GT, UNSIGNED_GT, SIGNED_LT, UNSIGNED_LT = range(6)
    SIGNED_GE, UNSIGNED_GE, SIGNED_LE, UNSIGNED_LE, BITSET, BITCLEAR = range(6, 12)


TPM_EO = OneOf(U16, range(12), RC.VALUE)


def session_of(tpm: Tpm, handle: int, number: int = 1) -> AuthSession:
    """The policy session a policy command names (the engine already checked it is loaded)."""
    session = tpm.volatile.sessions.get(handle)
    if session is None or not session.is_policy:
        raise TpmError(RC.HANDLE, handle=number)
    return session


def extend(session: AuthSession, code: int, *parts: bytes) -> None:
    """policyDigest_new = H(policyDigest_old || code || parts)."""
    session.policy_digest = digest(session.auth_hash, session.policy_digest, code.to_bytes(4, "big"), *parts)


def _u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


# ----------------------------------------------------------------------------- simple assertions


@command(CC.PolicyAuthValue, handles=[POLICY_SESSION])
def policy_auth_value(tpm: Tpm, cmd: Command) -> Response:
    session = session_of(tpm, cmd.handles[0])
    extend(session, CC.PolicyAuthValue)
    session.needs_auth_value, session.needs_password = True, False
    return Response()


@command(CC.PolicyPassword, handles=[POLICY_SESSION])
def policy_password(tpm: Tpm, cmd: Command) -> Response:
    """Same digest as PolicyAuthValue: the policy does not say how the authValue is proven."""
    session = session_of(tpm, cmd.handles[0])
    extend(session, CC.PolicyAuthValue)
    session.needs_password, session.needs_auth_value = True, False
    return Response()


@command(CC.PolicyCommandCode, handles=[POLICY_SESSION], params=[("code", U32)])
def policy_command_code(tpm: Tpm, cmd: Command) -> Response:
    session = session_of(tpm, cmd.handles[0])
    code = cmd.params.code
    if session.command_code is not None and session.command_code != code:
        raise TpmError(RC.VALUE, param=1)
    if code not in COMMANDS:
        raise TpmError(RC.POLICY_CC, param=1)
    extend(session, CC.PolicyCommandCode, code.to_bytes(4, "big"))
    session.command_code = code
    return Response()


@command(CC.PolicyLocality, handles=[POLICY_SESSION], params=[("locality", U8)])
def policy_locality(tpm: Tpm, cmd: Command) -> Response:
    """Localities 0-4 as bits (assertions narrow the set), or one extended locality (>= 32)."""
    session = session_of(tpm, cmd.handles[0])
    new, previous = cmd.params.locality, session.locality or 0
    if new == 0 or (previous and (previous < 32) != (new < 32)):
        raise TpmError(RC.RANGE, param=1)
    if new < 32:
        allowed = (previous or 0x1F) & new
        if not allowed:
            raise TpmError(RC.RANGE, param=1)
    elif previous and previous != new:
        raise TpmError(RC.RANGE, param=1)
    else:
        allowed = new
    extend(session, CC.PolicyLocality, bytes([new]))
    session.locality = allowed
    return Response()


@command(CC.PolicyCpHash, handles=[POLICY_SESSION], params=[("cpHashA", TPM2B_DIGEST)])
def policy_cp_hash(tpm: Tpm, cmd: Command) -> Response:
    session = session_of(tpm, cmd.handles[0])
    cp_hash = cmd.params.cpHashA
    if len(cp_hash) != HASHES[session.auth_hash].size:
        raise TpmError(RC.SIZE, param=1)
    if session.name_hash is not None or (session.cp_hash is not None and session.cp_hash != cp_hash):
        raise TpmError(RC.CPHASH)
    extend(session, CC.PolicyCpHash, cp_hash)
    session.cp_hash = cp_hash
    return Response()


@command(CC.PolicyNameHash, handles=[POLICY_SESSION], params=[("nameHash", TPM2B_DIGEST)])
def policy_name_hash(tpm: Tpm, cmd: Command) -> Response:
    session = session_of(tpm, cmd.handles[0])
    name_hash = cmd.params.nameHash
    if len(name_hash) != HASHES[session.auth_hash].size:
        raise TpmError(RC.SIZE, param=1)
    if session.name_hash is not None or session.cp_hash is not None:
        raise TpmError(RC.CPHASH)
    extend(session, CC.PolicyNameHash, name_hash)
    session.name_hash = name_hash
    return Response()


@command(
    CC.PolicyDuplicationSelect,
    handles=[POLICY_SESSION],
    params=[("objectName", TPM2B_NAME), ("newParentName", TPM2B_NAME), ("includeObject", TPMI_YES_NO)],
)
def policy_duplication_select(tpm: Tpm, cmd: Command) -> Response:
    """Limits duplication to one new parent (and object): a name hash plus TPM_CC_Duplicate."""
    session = session_of(tpm, cmd.handles[0])
    p = cmd.params
    if session.name_hash is not None or session.cp_hash is not None:
        raise TpmError(RC.CPHASH)
    if session.command_code is not None:
        raise TpmError(RC.COMMAND_CODE)
    session.name_hash = digest(session.auth_hash, p.objectName, p.newParentName)
    extend(session, CC.PolicyDuplicationSelect, p.objectName if p.includeObject else b"", p.newParentName,
           bytes([p.includeObject]))
    session.command_code = CC.Duplicate
    return Response()


@command(CC.PolicyNvWritten, handles=[POLICY_SESSION], params=[("writtenSet", TPMI_YES_NO)])
def policy_nv_written(tpm: Tpm, cmd: Command) -> Response:
    session = session_of(tpm, cmd.handles[0])
    written = bool(cmd.params.writtenSet)
    if session.nv_written is not None and session.nv_written != written:
        raise TpmError(RC.VALUE, param=1)
    session.nv_written = written
    extend(session, CC.PolicyNvWritten, bytes([written]))
    return Response()


@command(CC.PolicyOR, handles=[POLICY_SESSION], params=[("pHashList", TPML_DIGEST_OR)])
def policy_or(tpm: Tpm, cmd: Command) -> Response:
    """Any one branch satisfied: the digest restarts from zeros over the whole list."""
    session = session_of(tpm, cmd.handles[0])
    branches = list(cmd.params.pHashList)
    if not session.is_trial and session.policy_digest not in branches:
        raise TpmError(RC.VALUE, param=1)
    session.policy_digest = bytes(HASHES[session.auth_hash].size)
    extend(session, CC.PolicyOR, *branches)
    return Response()


@command(CC.PolicyGetDigest, handles=[POLICY_SESSION], response_tpm2b=True)
def policy_get_digest(tpm: Tpm, cmd: Command) -> Response:
    return Response(params=TPM2B_DIGEST.build(session_of(tpm, cmd.handles[0]).policy_digest))


# ----------------------------------------------------------------------------- PCR, NV and time conditions


def _allocated_only(tpm: Tpm, selection: list[cs.Container]) -> list[tuple[int, bytes]]:
    """The selection with banks that are not allocated cleared, as the digest records it."""
    return [(s.hash, bytes(s.pcrSelect) if s.hash in tpm.volatile.pcrs else bytes(len(s.pcrSelect)))
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


def condition_holds(operation: int, a: bytes, b: bytes) -> bool:
    """TPM_EO comparison of equally long big-endian operands (A from the TPM, B from the caller)."""
    if operation in (EO.BITSET, EO.BITCLEAR):
        masked = [x & y for x, y in zip(a, b, strict=True)]
        return masked == list(b) if operation == EO.BITSET else not any(masked)
    signed = operation in (EO.SIGNED_GT, EO.SIGNED_LT, EO.SIGNED_GE, EO.SIGNED_LE)
    x, y = int.from_bytes(a, "big", signed=signed), int.from_bytes(b, "big", signed=signed)
    return {
        EO.EQ: x == y, EO.NEQ: x != y,
        EO.SIGNED_GT: x > y, EO.UNSIGNED_GT: x > y, EO.SIGNED_LT: x < y, EO.UNSIGNED_LT: x < y,
        EO.SIGNED_GE: x >= y, EO.UNSIGNED_GE: x >= y, EO.SIGNED_LE: x <= y, EO.UNSIGNED_LE: x <= y,
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
