"""A VM's vTPM state, kept in the vTPM section of its ``.nvram``.

For an encrypted VM the ``.nvram`` is a vmcrypt container under the VM's
DEK (unwrapped through the key safe and the key provider); every change the
TPM makes persistent rewrites it atomically. The EFI variable section and
any other section are carried along unchanged. Opening holds the VM's lock
(``vm_lock``) until closed: one vTPM per VM, and none while an operation
changes the VM's files; it first checks the VM's files against its encryption
record (``vm_record``).
"""

from __future__ import annotations

import os
from pathlib import Path

from vmcrypt import container
from vmcrypt.atomic import write_atomic
from vmcrypt.errors import VmError
from vmcrypt.home import resolve_home
from vmcrypt.keyref import DataKey
from vmcrypt.keys import KeyManager
from vmcrypt.nvram import Nvram
from vmcrypt.providers.registry import ProviderRegistry
from vmcrypt.vm import FileKind, VmFile, VmHome
from vmcrypt.vm_encryption import Journal, check_vm_files
from vmcrypt.vm_lock import VTPM, VmLock, lock_vm
from vtpm.state import StateError, TpmState
from vtpm.storage import StateStoreError


class VmNvramStore:
    """StateStore for ``vtpm serve --vm``: the vTPM section of the VM's (encrypted) .nvram."""

    def __init__(self, home: VmHome, key: DataKey | None, *, vm_id: str = "", lock: VmLock | None = None) -> None:
        self.vm = home
        self.key = key
        self.nvram_file = VmFile(home.nvram_path, FileKind.NVRAM)
        self._vm_id = vm_id
        self._vm_lock = lock
        self._nvram: Nvram | None = None  # other sections, read once while we hold the lock

    @classmethod
    def open(cls, vmx: str | os.PathLike[str], home: str | None = None) -> "VmNvramStore":
        """Take the VM's lock (one vTPM per VM; none while an operation changes the VM), check the
        VM's files, and unlock the VM's key."""
        vm = VmHome(vmx)
        lock = lock_vm(vm, VTPM)
        try:
            journal = Journal.load(vm)
            if journal is not None:
                raise VmError(
                    f"an interrupted '{journal.operation.value}' must finish before the vTPM can run", vm.vmx_path
                )
            if not vm.nvram_path.exists():
                raise VmError("the VM has no .nvram file", vm.nvram_path)
            keys = KeyManager(ProviderRegistry(resolve_home(home)))
            state = check_vm_files(vm, keys)
            key = keys.unlock(state.reference) if state.reference is not None else None
            lock.mark_vtpm(vm)
            return cls(vm, key, vm_id=state.record.vm_id if state.record else "", lock=lock)
        except BaseException:
            lock.release()
            raise

    def close(self) -> None:
        """Release the per-VM lock (another server or tool may open the vTPM now)."""
        if self._vm_lock is not None:
            self._vm_lock.release()
            self._vm_lock = None

    def __enter__(self) -> "VmNvramStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        kind = "encrypted" if self.key else "unencrypted"
        return f"{self.vm.nvram_path} (vTPM section, {kind})"

    def _read_nvram(self) -> Nvram:
        path = self.vm.nvram_path
        if container.is_container(path):
            if self.key is None:
                raise VmError("the .nvram is encrypted but the VM has no key safe", path)
            raw = container.read_file(path, self.key)
        else:
            if self.key is not None:
                raise VmError("the VM is encrypted but its .nvram is not", path)
            raw = Path(path).read_bytes()
        return Nvram.parse(raw, str(path))

    def read_plain(self) -> bytes:
        """The whole .nvram (EFI variables and vTPM section) in clear, for snapshots."""
        return self._read_nvram().build()

    def write_plain(self, data: bytes) -> None:
        """Replace the whole .nvram (a snapshot being reverted), encrypted if the VM is."""
        nvram = Nvram.parse(data, str(self.vm.nvram_path))
        self._nvram = nvram
        self._write(nvram.build())

    def _write(self, data: bytes) -> None:
        """The .nvram rewritten (encrypted if the VM is, bound to the VM)."""
        if self.key is None:
            write_atomic(self.vm.nvram_path, data)
            return
        container.write_file(self.vm.nvram_path, data, self.key, label=self.nvram_file.label, vm_id=self._vm_id)

    def load(self) -> TpmState | None:
        self._nvram = self._read_nvram()
        section = self._nvram.vtpm_state
        if section is None:
            return None
        try:
            return TpmState.from_bytes(section)
        except StateError as exc:
            raise StateStoreError(f"{self.vm.nvram_path}: vTPM section: {exc}") from None

    def save(self, raw: bytes | None) -> None:
        """Write the vTPM section (None removes it), keeping the EFI variables."""
        if self._nvram is None:
            self._nvram = self._read_nvram()
        nvram = self._nvram
        nvram.vtpm_state = raw
        self._write(nvram.build())

