"""The simple policy assertions (Part 3, section 23): PolicyAuthValue, PolicyPassword,
PolicyCommandCode, PolicyLocality, PolicyPhysicalPresence, PolicyCpHash, PolicyNameHash,
PolicyTemplate, PolicyDuplicationSelect, PolicyNvWritten, PolicyOR, PolicyGetDigest."""

from __future__ import annotations

from typing import TYPE_CHECKING

import construct as cs

from vtpm.commands.ea.common import POLICY_SESSION, extend, session_of
from vtpm.constants import CC, RC
from vtpm.core import COMMANDS, Command, Response, command
from vtpm.crypto import HASHES, digest
from vtpm.errors import TpmError
from vtpm.marshal.primitives import U8, U32, OneOf
from vtpm.marshal.structures import TPM2B_DIGEST, TPM2B_NAME

if TYPE_CHECKING:
    from vtpm.engine import Tpm

TPMI_YES_NO = OneOf(U8, [0, 1], RC.VALUE)


# TPML_DIGEST as PolicyOR takes it: two to eight digests (TPM_RC_SIZE otherwise)
TPML_DIGEST_OR = cs.PrefixedArray(OneOf(U32, range(2, 9), RC.SIZE), TPM2B_DIGEST)


@command(CC.PolicyAuthValue, handles=[POLICY_SESSION])
def policy_auth_value(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_PolicyAuthValue (Part 3 23.17): the authorized entity's authValue goes into the session HMAC."""
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
    """TPM2_PolicyCommandCode (Part 3 23.11): limit the policy to one command; TPM_RC_VALUE when another was already
    set, TPM_RC_POLICY_CC for a command this TPM does not implement."""
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


@command(CC.PolicyPhysicalPresence, handles=[POLICY_SESSION])
def policy_physical_presence(tpm: Tpm, cmd: Command) -> Response:
    """The authorized command will need physical presence (Part 3 23.8)."""
    session = session_of(tpm, cmd.handles[0])
    extend(session, CC.PolicyPhysicalPresence)
    session.pp_required = True
    return Response()


@command(CC.PolicyTemplate, handles=[POLICY_SESSION], params=[("templateHash", TPM2B_DIGEST)])
def policy_template(tpm: Tpm, cmd: Command) -> Response:
    """Create, CreatePrimary or CreateLoaded may only make an object from this template (Part 3 23.21)."""
    session = session_of(tpm, cmd.handles[0])
    template_hash = cmd.params.templateHash
    if session.template_hash is not None:
        if session.template_hash != template_hash:
            raise TpmError(RC.VALUE, param=1)
    elif session.held_hash() is not None:  # a cpHash or name hash holds the place
        raise TpmError(RC.CPHASH)
    if len(template_hash) != HASHES[session.auth_hash].size:
        raise TpmError(RC.SIZE, param=1)
    extend(session, CC.PolicyTemplate, template_hash)
    session.template_hash = template_hash
    return Response()


@command(CC.PolicyCpHash, handles=[POLICY_SESSION], params=[("cpHashA", TPM2B_DIGEST)])
def policy_cp_hash(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_PolicyCpHash (Part 3 23.13): limit the policy to one cpHash; TPM_RC_CPHASH when another or a nameHash was
    already set, TPM_RC_SIZE for a size other than the session's digest."""
    session = session_of(tpm, cmd.handles[0])
    cp_hash = cmd.params.cpHashA
    if len(cp_hash) != HASHES[session.auth_hash].size:
        raise TpmError(RC.SIZE, param=1)
    if session.held_hash() is not None and session.cp_hash != cp_hash:  # a different cpHash, or no cpHash
        raise TpmError(RC.CPHASH)
    extend(session, CC.PolicyCpHash, cp_hash)
    session.cp_hash = cp_hash
    return Response()


@command(CC.PolicyNameHash, handles=[POLICY_SESSION], params=[("nameHash", TPM2B_DIGEST)])
def policy_name_hash(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_PolicyNameHash (Part 3 23.14): limit the policy to the handles whose Names hash to nameHash; TPM_RC_CPHASH
    when a cpHash or nameHash was already set."""
    session = session_of(tpm, cmd.handles[0])
    name_hash = cmd.params.nameHash
    if len(name_hash) != HASHES[session.auth_hash].size:
        raise TpmError(RC.SIZE, param=1)
    if session.held_hash() is not None:
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
    if session.held_hash() is not None:
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
    """TPM2_PolicyNvWritten (Part 3 23.20): require the NV index used to be written (or not); TPM_RC_VALUE when the
    opposite was already asserted."""
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
    """TPM2_PolicyGetDigest (Part 3 23.19): the session's current policy digest."""
    return Response(params=TPM2B_DIGEST.build(session_of(tpm, cmd.handles[0]).policy_digest))
