"""Dictionary-attack protection (Part 1, 19.8): the rules authorization applies.

Every failed authorization of a DA-protected entity counts; at ``max_tries``
the TPM is in lockout and refuses such authorizations with TPM_RC_LOCKOUT
until failures heal (one per ``recovery_time`` seconds) or lockoutAuth
resets the counter. A failed lockoutAuth locks lockoutAuth itself for
``lockout_recovery`` seconds (until the next TPM Reset when that is 0).
The commands that change these settings are in vtpm.commands.dictionary_attack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vtpm.constants import RC
from vtpm.core import Entity
from vtpm.errors import TpmError

if TYPE_CHECKING:
    from vtpm.engine import Tpm


class DictionaryAttack:
    """The DA rules applied to one TPM (state lives in TpmState/Volatile)."""

    def __init__(self, tpm: Tpm) -> None:
        self.tpm = tpm

    def heal(self) -> None:
        """Let failures expire: one per recovery_time seconds of TPM time."""
        state, volatile = self.tpm.state, self.tpm.volatile
        now = self.tpm.now_ms()
        if state.recovery_time and state.failed_tries:
            healed = (now - volatile.da_last_decrement_ms) // (state.recovery_time * 1000)
            if healed:
                state.failed_tries = max(0, state.failed_tries - healed)
                volatile.da_last_decrement_ms += healed * state.recovery_time * 1000
                self.tpm.mark_dirty()
        else:
            volatile.da_last_decrement_ms = now

    def in_lockout(self) -> bool:
        """Whether DA-protected entities are locked out now (after healing by the time elapsed)."""
        self.heal()
        state = self.tpm.state
        return state.max_tries == 0 or state.failed_tries >= state.max_tries

    def lockout_auth_blocked(self) -> bool:
        """Whether lockoutAuth is blocked by a failure less than lockoutRecovery ago (until TPM Reset when
        lockoutRecovery is 0)."""
        failed = self.tpm.volatile.lockout_auth_failed_ms
        if failed is None:
            return False
        recovery = self.tpm.state.lockout_recovery
        if recovery and self.tpm.now_ms() - failed >= recovery * 1000:
            self.tpm.volatile.lockout_auth_failed_ms = None
            return False
        return True

    def check_allowed(self, entity: Entity) -> None:
        """TPM_RC_LOCKOUT when ``entity`` may not be authorized now: lockoutAuth while blocked, a DA-protected entity in
        lockout."""
        if entity.is_lockout:
            if self.lockout_auth_blocked():
                raise TpmError(RC.LOCKOUT)
        elif entity.da_protected and self.in_lockout():
            raise TpmError(RC.LOCKOUT)

    def failure(self, entity: Entity, session_number: int) -> TpmError:
        """Record a failed authorization; return the error to answer with."""
        if entity.is_lockout:
            self.tpm.volatile.lockout_auth_failed_ms = self.tpm.now_ms()
            return TpmError(RC.AUTH_FAIL, session=session_number)
        if not entity.da_protected:
            return TpmError(RC.BAD_AUTH, session=session_number)
        state = self.tpm.state
        if state.failed_tries == 0:
            self.tpm.volatile.da_last_decrement_ms = self.tpm.now_ms()
        state.failed_tries += 1
        self.tpm.mark_dirty()
        return TpmError(RC.AUTH_FAIL, session=session_number)
