"""Start-up (Part 3, section 9): Startup and Shutdown."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vtpm.constants import CC, RC, SU
from vtpm.core import Command, Response, command
from vtpm.entities import audit, commit
from vtpm.entities.nv import shutdown_nv, startup_clear_nv
from vtpm.entities.pcr import PCR_ATTRIBUTES, counts_update
from vtpm.errors import TpmError
from vtpm.marshal.primitives import U16, OneOf
from vtpm.state import PROOF_SIZE, SEED_SIZE, SavedState

if TYPE_CHECKING:
    from vtpm.engine import Tpm

TPM_SU = OneOf(U16, [SU.CLEAR, SU.STATE], RC.VALUE)


@command(CC.Startup, params=[("startupType", TPM_SU)], before_startup=True, allow_sessions=False)
def startup(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_Startup (Part 3 9.3): TPM Reset, Restart or Resume, from the last shutdown's type and what it saved;
    TPM_RC_INITIALIZE when already started, TPM_RC_VALUE for STATE without a saved state."""
    volatile, state = tpm.volatile, tpm.state
    if volatile.started:
        raise TpmError(RC.INITIALIZE)
    kind = cmd.params.startupType
    previous = state.orderly
    if kind == SU.STATE and (previous != "state" or state.saved is None):
        raise TpmError(RC.VALUE, param=1)
    if state.pcr_banks_pending is not None and kind == SU.CLEAR:
        state.pcr_banks = state.pcr_banks_pending  # PCR_Allocate takes effect at TPM Reset
        state.pcr_partial = state.pcr_partial_pending or []
        state.pcr_banks_pending = state.pcr_partial_pending = None
    volatile.reset_pcrs(state.pcr_banks, cmd.locality)
    saved = kind == SU.STATE
    if not saved:
        volatile.pcr_update_counter = 0
    volatile.pcr_update_counter += sum(
        1 for i, a in enumerate(PCR_ATTRIBUTES) if counts_update(i) and not (saved and a.save)
    )
    if kind == SU.STATE:  # TPM Resume: saved PCRs come back
        assert state.saved is not None
        for bank, values in state.saved.pcrs.items():
            if bank in volatile.pcrs:
                for index in range(16):
                    volatile.pcrs[bank][index] = values[index]
        state.restart_count += 1
    elif previous == "state":  # TPM Restart
        state.restart_count += 1
    else:  # TPM Reset: a new null hierarchy, no commitments, a new command audit digest
        state.reset_count += 1
        state.restart_count = 0
        volatile.null_seed = tpm.random(SEED_SIZE)
        volatile.null_proof = tpm.random(PROOF_SIZE)
        commit.reset(tpm)
        audit.reset_digest(tpm)
        if previous == "none":
            state.clock_safe = False
    if kind == SU.CLEAR:
        volatile.sh_enable = volatile.eh_enable = True
        volatile.pcr_group_auth = b""
        volatile.nv_read_locked.clear()
        volatile.nv_write_locked_stclear.clear()
        state.nv_global_locked = False
        startup_clear_nv(tpm)
    volatile.ph_enable = True
    volatile.platform_auth = b""
    state.last_startup_orderly = previous != "none"
    state.orderly = "none"
    state.saved = None
    volatile.started = True
    tpm.mark_dirty()
    return Response()


@command(CC.Shutdown, params=[("shutdownType", TPM_SU)])
def shutdown(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_Shutdown (Part 3 9.4): record an orderly shutdown, saving the state Startup(STATE) restores."""
    state = tpm.state
    if cmd.params.shutdownType == SU.STATE:
        pcrs = tpm.volatile.pcrs
        state.saved = SavedState({bank: list(values[:16]) for bank, values in pcrs.items()})
        state.orderly = "state"
    else:
        state.saved = None
        state.orderly = "clear"
    shutdown_nv(tpm)
    state.clock_safe = True
    tpm.mark_dirty()
    return Response()
