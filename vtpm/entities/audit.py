"""Command audit (Part 1 19.6.10 and Part 3 21): which commands the TPM audits, the command audit
digest and its counter.

An audited command that succeeds extends the digest with cpHash || rpHash under the audit hash
algorithm; the first one after a TPM Reset or after GetCommandAuditDigest starts a new digest and
increments the audit counter. SetCommandCodeAuditStatus is always audited, Shutdown never. The
session audit digests live in their sessions (vtpm.sessions); both are extended by
vtpm.authorization when the response is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vtpm.constants import CC
from vtpm.core import COMMANDS
from vtpm.crypto import HASHES, digest

if TYPE_CHECKING:
    from vtpm.engine import Tpm

ALWAYS_AUDITED = CC.SetCommandCodeAuditStatus
NEVER_AUDITED = CC.Shutdown


def is_audited(tpm: Tpm, code: int) -> bool:
    """Whether command ``code`` is on the command audit list."""
    return code in tpm.state.audit_commands


def set_audited(tpm: Tpm, code: int) -> bool:
    """Audit ``code`` from now on; False when nothing changed (unimplemented, Shutdown, already audited)."""
    if code not in COMMANDS or code == NEVER_AUDITED or code in tpm.state.audit_commands:
        return False
    tpm.state.audit_commands = sorted({*tpm.state.audit_commands, code})
    tpm.mark_dirty()
    return True


def clear_audited(tpm: Tpm, code: int) -> bool:
    """Stop auditing ``code``; SetCommandCodeAuditStatus itself stays audited."""
    if code == ALWAYS_AUDITED or code not in tpm.state.audit_commands:
        return False
    tpm.state.audit_commands = [c for c in tpm.state.audit_commands if c != code]
    tpm.mark_dirty()
    return True


def audited_commands(tpm: Tpm) -> list[int]:
    """The audited commands this TPM implements, in order (TPM_CAP_AUDIT_COMMANDS, the audit digest's command list)."""
    return sorted(c for c in tpm.state.audit_commands if c in COMMANDS)


def change_audit_hash(tpm: Tpm, alg: int) -> None:
    """A new audit hash: the digest restarts, and the command making the change is not audited."""
    tpm.state.audit_hash_alg = alg
    tpm.state.command_audit_digest = b""
    tpm.volatile.audit_alg_changed = True
    tpm.mark_dirty()


def commands_digest(tpm: Tpm) -> bytes:
    """H(every audited command code, ascending), under the audit hash (TPMS_COMMAND_AUDIT_INFO.commandDigest)."""
    return digest(tpm.state.audit_hash_alg, *(c.to_bytes(4, "big") for c in audited_commands(tpm)))


def record_command(tpm: Tpm, cp_hash: bytes, rp_hash: bytes) -> None:
    """Extend the command audit digest after an audited command (starting a new digest if there is none)."""
    state = tpm.state
    if tpm.volatile.audit_alg_changed:
        tpm.volatile.audit_alg_changed = False
        return
    if not state.command_audit_digest:
        state.command_audit_digest = bytes(HASHES[state.audit_hash_alg].size)
        state.audit_counter += 1
    state.command_audit_digest = digest(state.audit_hash_alg, state.command_audit_digest, cp_hash, rp_hash)
    tpm.mark_dirty()


def reset_digest(tpm: Tpm) -> None:
    """TPM Reset, or a signed GetCommandAuditDigest: the next audited command starts a new digest."""
    tpm.state.command_audit_digest = b""
    tpm.mark_dirty()
