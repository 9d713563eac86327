"""Suspend and resume: the vTPM's saved state travels in the VM's encrypted .vmss.

Suspending asks the running vTPM for TPM2_Shutdown(STATE), as a platform does
before it loses power with the intent to resume, stops it, and moves the saved
state (the PCRs that Startup(STATE) restores) out of the .nvram into the .vmss.
Resuming puts it back, starts the vTPM and issues TPM2_Startup(STATE), so the
guest finds its PCRs as it left them. Discarding the .vmss means the next power
on is a cold boot (Startup(STATE) is then refused by the TPM, as it should be).
Transient objects and sessions do not survive, as across a TPM Resume.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from vmcrypt.errors import VmError
from vmcrypt.keys import KeyManager
from vmcrypt.vm import FileKind, VmFile, VmHome
from vmcrypt.home_json import read_home_json, write_home_json
from vmcrypt.vm_encryption import unlist_home_file
from vmcrypt.vm_vtpm import VmNvramStore
from vtpm.client import TpmClient, TpmCommandError
from vtpm.constants import RC
from vtpm.state import SavedState
from vtpm.transport import TransportError

FORMAT = 1


def suspend_file(vm: VmHome) -> VmFile:
    """The VM's .vmss, where a suspended VM's vTPM saved state is kept (it may not exist)."""
    return VmFile(vm.directory / f"{vm.name}.vmss", FileKind.SUSPEND)


def _state_command(port: int, startup: bool, path: Path | None = None) -> int:
    """Startup(STATE) or Shutdown(STATE) on the vTPM served on ``port``; its response code."""
    try:
        with TpmClient.swtpm_tcp(port) as tpm:
            if startup:
                tpm.startup(clear=False)
            else:
                tpm.shutdown(clear=False)
    except TpmCommandError as exc:
        return exc.rc
    except TransportError as exc:
        raise VmError(f"the vTPM did not answer {'Startup' if startup else 'Shutdown'}(STATE): {exc}", path) from None
    return RC.SUCCESS


def save_tpm_state(port: int) -> bool:
    """Shutdown(STATE) on the running vTPM; False when the guest never started the TPM."""
    rc = _state_command(port, startup=False)
    if rc == RC.INITIALIZE:
        return False
    if rc != RC.SUCCESS:
        raise VmError(f"the vTPM refused Shutdown(STATE) (response code 0x{rc:03x})")
    return True


def resume_tpm_state(port: int, vmx_path: Path) -> None:
    """Startup(STATE) on the restarted vTPM: its PCRs come back as they were saved."""
    rc = _state_command(port, startup=True, path=vmx_path)
    if rc != RC.SUCCESS:
        raise VmError(f"the vTPM refused Startup(STATE) (response code 0x{rc:03x})", vmx_path)


def write_suspend_state(vm: VmHome, home: str, tpm_started: bool) -> None:
    """Move the TPM's saved state from the .nvram into the .vmss (written first)."""
    target = suspend_file(vm)
    with VmNvramStore.open(vm.vmx_path, home=home) as store:
        state = store.load()
        saved = None
        if state is not None and tpm_started:
            if state.saved is None:
                raise VmError("the vTPM has no saved state after Shutdown(STATE)", vm.nvram_path)
            saved = {str(bank): [v.hex() for v in values] for bank, values in state.saved.pcrs.items()}
        body = {"format": FORMAT, "vm": vm.name, "tpm_started": tpm_started, "saved_pcrs": saved,
                "suspended": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        write_home_json(vm, target, body, store.key)
        if saved is not None:
            state.saved = None
            store.save(state.to_bytes())


def read_suspend_state(vm: VmHome, keys: KeyManager) -> dict:
    """The .vmss document (``tpm_started``, ``saved_pcrs``, ...), decrypted and checked; VmError if the VM
    is not suspended or the file cannot be read, is bound to another VM or has an unexpected layout."""
    target = suspend_file(vm)
    if not target.path.exists():
        raise VmError("the VM is not suspended (no .vmss)", vm.vmx_path)
    body = read_home_json(vm, target, keys, FORMAT, "suspend state")
    saved = body.get("saved_pcrs")
    if not (isinstance(body.get("tpm_started"), bool) and (saved is None or (
            isinstance(saved, dict) and all(isinstance(v, list) and all(isinstance(x, str) for x in v)
                                            for v in saved.values())))):
        raise VmError("the suspend state cannot be read (unexpected layout)", target.path)
    return body


def discard_suspend_state(vm: VmHome, keys: KeyManager) -> None:
    """Drop the .vmss from the VM's encryption record, then delete it."""
    target = suspend_file(vm)
    unlist_home_file(vm, keys, target)
    target.path.unlink(missing_ok=True)


def restore_tpm_state(vm: VmHome, home: str, body: dict) -> None:
    """Put the saved PCRs back so that Startup(STATE) finds them."""
    if not body.get("saved_pcrs"):
        return
    with VmNvramStore.open(vm.vmx_path, home=home) as store:
        state = store.load()
        if state is None:
            raise VmError("the VM's vTPM is gone", vm.nvram_path)
        state.saved = SavedState({int(b): [bytes.fromhex(v) for v in values] for b, values in body["saved_pcrs"].items()})
        state.orderly = "state"
        store.save(state.to_bytes())
