"""Dictionary Attack Functions (Part 3, section 25): DictionaryAttackLockReset and
DictionaryAttackParameters. The rules themselves are in vtpm.entities.dictionary_attack."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vtpm.constants import CC, RH
from vtpm.core import Auth, Command, Response, command, handle_spec
from vtpm.marshal.primitives import U32

if TYPE_CHECKING:
    from vtpm.engine import Tpm


@command(CC.DictionaryAttackLockReset, handles=[handle_spec("lockHandle", Auth.USER, permanent=[RH.LOCKOUT])])
def lock_reset(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_DictionaryAttackLockReset (Part 3 25.2): clear the failure count and leave lockout mode."""
    tpm.state.failed_tries = 0
    tpm.volatile.da_last_decrement_ms = tpm.now_ms()
    tpm.mark_dirty()
    return Response()


@command(
    CC.DictionaryAttackParameters,
    handles=[handle_spec("lockHandle", Auth.USER, permanent=[RH.LOCKOUT])],
    params=[("newMaxTries", U32), ("newRecoveryTime", U32), ("lockoutRecovery", U32)],
)
def parameters(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_DictionaryAttackParameters (Part 3 25.3): set maxTries, recoveryTime and lockoutRecovery."""
    state = tpm.state
    state.max_tries = cmd.params.newMaxTries
    state.recovery_time = cmd.params.newRecoveryTime
    state.lockout_recovery = cmd.params.lockoutRecovery
    state.failed_tries = min(state.failed_tries, state.max_tries)
    tpm.mark_dirty()
    return Response()
