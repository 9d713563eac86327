"""Command Audit (Part 3, section 21): SetCommandCodeAuditStatus.

The audit state itself (the list of audited commands, the audit hash, the digest and its counter)
is in vtpm.entities.audit; the digest is extended when an audited command's response is built
(vtpm.authorization) and reported by GetCommandAuditDigest (vtpm.commands.attestation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vtpm.constants import ALG, CC, RC, RH
from vtpm.core import Auth, Command, Response, command, handle_spec
from vtpm.entities.audit import change_audit_hash, clear_audited, set_audited
from vtpm.errors import TpmError
from vtpm.marshal.primitives import U32
from vtpm.marshal.structures import TPMI_ALG_HASH_NULL, counted

if TYPE_CHECKING:
    from vtpm.engine import Tpm

MAX_CAP_CC = 254  # (MAX_CAP_BUFFER - sizeof(TPM_CAP) - sizeof(UINT32)) / sizeof(TPM_CC)
TPML_CC = counted(U32, MAX_CAP_CC)


@command(CC.SetCommandCodeAuditStatus,
         handles=[handle_spec("auth", Auth.USER, permanent=(RH.OWNER, RH.PLATFORM))],
         params=[("auditAlg", TPMI_ALG_HASH_NULL), ("setList", TPML_CC), ("clearList", TPML_CC)])
def set_command_code_audit_status(tpm: Tpm, cmd: Command) -> Response:
    """Change the audit hash (alone), or add and remove audited commands (Part 3 21.2)."""
    p = cmd.params
    if p.auditAlg != ALG.NULL and p.auditAlg != tpm.state.audit_hash_alg:
        if p.setList or p.clearList:  # the algorithm and the list do not change together
            raise TpmError(RC.VALUE, param=1)
        change_audit_hash(tpm, p.auditAlg)
        return Response()
    for code in p.setList:
        set_audited(tpm, code)
    for code in p.clearList:
        clear_audited(tpm, code)
    return Response()
