"""ContextSave / ContextLoad: object contexts survive restarts of the TPM process, session
contexts load once, damaged contexts are refused.

Bad inputs tried: a flipped byte in a context blob, loading a session context twice, a
session context after a TPM Reset, an object context after the owner hierarchy was cleared.
"""

from __future__ import annotations

from test_vtpm_ek import create_primary_command
from test_vtpm_engine import cmd, pw, rc
from vtpm.constants import CC, RC, RH
from vtpm.ek import EkKind, ek_template
from vtpm.engine import Tpm
from vtpm.state import TpmState

STARTUP = cmd(CC.Startup, b"\x00\x00")


def save(tpm: Tpm, handle: int) -> bytes:
    r = tpm.execute(0, cmd(CC.ContextSave, handles=(handle,)))
    assert rc(r) == 0, hex(rc(r))
    return r[10:]


def load(tpm: Tpm, blob: bytes) -> bytes:
    return tpm.execute(0, cmd(CC.ContextLoad, blob))


def test_object_context_round_trip_and_restart() -> None:
    tpm = Tpm(TpmState.manufacture())
    tpm.execute(0, STARTUP)
    created = tpm.execute(0, create_primary_command(ek_template(EkKind.ECC_P256).template, RH.OWNER))
    handle = int.from_bytes(created[10:14], "big")
    blob = save(tpm, handle)
    assert rc(tpm.execute(0, cmd(CC.FlushContext, handle.to_bytes(4, "big")))) == 0
    loaded = load(tpm, blob)
    assert rc(loaded) == 0
    # the same context opens on a new process holding the same persistent state
    restarted = Tpm(TpmState.from_bytes(tpm.state.to_bytes()))
    restarted.execute(0, STARTUP)
    assert rc(load(restarted, blob)) == 0
    damaged = bytearray(blob)
    damaged[-5] ^= 1
    assert rc(load(restarted, bytes(damaged))) == RC.INTEGRITY | 0x40 | 0x100
    # after TPM2_Clear the owner hierarchy's proof changed: old contexts no longer open
    assert rc(restarted.execute(0, cmd(CC.Clear, handles=(RH.LOCKOUT,), auth=pw()))) == 0
    assert rc(load(restarted, blob)) == RC.INTEGRITY | 0x40 | 0x100


def test_session_context_loads_once() -> None:
    tpm = Tpm(TpmState.manufacture())
    tpm.execute(0, STARTUP)
    body = b"\x00\x10" + bytes(16) + b"\x00\x00" + b"\x01" + b"\x00\x10" + b"\x00\x0b"
    started = tpm.execute(0, cmd(CC.StartAuthSession, body, handles=(RH.NULL, RH.NULL)))
    session = int.from_bytes(started[10:14], "big")
    blob = save(tpm, session)
    assert session not in tpm.volatile.sessions  # saved sessions leave the loaded slots
    assert rc(load(tpm, blob)) == 0
    assert rc(load(tpm, blob)) == RC.HANDLE | 0x40 | 0x100  # replay of an old save
    newer = save(tpm, session)
    assert rc(load(tpm, blob)) == RC.HANDLE | 0x40 | 0x100
    tpm.execute(0, cmd(CC.Shutdown, b"\x00\x00"))
    tpm.power_cycle()
    tpm.execute(0, STARTUP)
    assert rc(load(tpm, newer)) != 0  # sessions do not survive a TPM Reset
