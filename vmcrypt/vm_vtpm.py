"""A VM's vTPM state, kept in the vTPM section of its ``.nvram``.

For an encrypted VM the ``.nvram`` is a vmcrypt container under the VM's
DEK (unwrapped through the key safe and the key provider); every change the
TPM makes persistent rewrites it atomically. The EFI variable section and
any other section are carried along unchanged.

Rollback: every save writes a higher container generation, and the latest
one is also recorded outside the VM's directory, at the key provider under the
VM's key id (and, for a managed VM, in the inventory). Opening the vTPM refuses
an ``.nvram`` older than that record (an older copy put back would bring back
deleted NV data and a reset dictionary-attack counter) unless the rollback is
explicitly accepted. Opening holds the VM's lock (``vm_lock``) until closed and
first checks the VM's files against its encryption record (``vm_record``).

Journal: a served vTPM journals its changes in ``X.nvram.journal`` beside the
``.nvram`` (``vtpm.journal_store``), sealed under keys derived from the VM's
DEK and bound to the VM's id and the ``.nvram``'s generation; its position is
recorded at the key provider too (role ``nvram-journal``). Opening replays and
folds it into a new ``.nvram`` generation, so every tool that opens the store
sees the whole state.
"""

from __future__ import annotations

import os
from pathlib import Path

from durable.atomic import write_atomic
from vmcrypt import container
from vmcrypt.errors import RollbackError, VmError
from vmcrypt.home import resolve_home
from vmcrypt.keyref import DataKey
from vmcrypt.keys import KeyManager
from vmcrypt.nvram import Nvram
from vmcrypt.providers.registry import ProviderRegistry
from vmcrypt.vm import FileKind, VmFile, VmHome
from vmcrypt.vm_encryption import NVRAM_ROLE, Journal, VmxState, check_vm_files
from vmcrypt.vm_lock import VTPM, VmBusyError, VmLock, lock_vm
from vmcrypt.providers.base import KeyProvider
from vtpm.journal import position
from vtpm.journal_store import JournalBinding, StateStoreError, recover
from vtpm.state import StateError, TpmState

NVRAM_JOURNAL_ROLE = "nvram-journal"  # the journal position recorded at the key provider
JOURNAL_SUFFIX = ".journal"


class ProviderPositions:
    """The journal position of a VM's vTPM, kept at its key provider beside the .nvram's generation."""

    def __init__(self, keys: KeyManager, key: DataKey) -> None:
        self._provider = keys.provider(key.reference.provider_id)
        self._key_id = key.reference.key_id

    def recorded(self) -> int | None:
        """The journal position last recorded at the key provider, or None when none is."""
        return self._provider.generation(self._key_id, NVRAM_JOURNAL_ROLE)

    def record(self, position: int, *, allow_lower: bool = False) -> None:
        """Record ``position`` at the key provider; the recorded position never goes lower unless ``allow_lower``
        (a rollback an administrator accepted)."""
        self._provider.record_generation(self._key_id, NVRAM_JOURNAL_ROLE, position, allow_lower=allow_lower)


def journal_path(vm: VmHome) -> Path:
    """The vTPM state journal beside the VM's .nvram."""
    return vm.nvram_path.with_name(vm.nvram_path.name + JOURNAL_SUFFIX)


def check_nvram_generation(vm: VmHome, keys: KeyManager, state: VmxState, *, accept_rollback: bool = False) -> int:
    """The .nvram's generation, refused (RollbackError) when older than the one its key provider
    recorded, unless ``accept_rollback`` (then the provider's record is lowered to it). 0 when clear."""
    path = vm.nvram_path
    if state.reference is None or not container.is_container(path):
        return 0
    generation = container.read_header(path).generation
    reference = state.reference
    provider = keys.provider(reference.provider_id)
    recorded = provider.generation(reference.key_id, NVRAM_ROLE)
    if recorded is not None and generation < recorded:
        if not accept_rollback:
            raise RollbackError(
                f"generation {generation} is older than the last saved generation {recorded}: the file was rolled "
                "back (an older copy was put in its place); if that was deliberate, accept it with --accept-rollback",
                path)
        provider.record_generation(reference.key_id, NVRAM_ROLE, generation, allow_lower=True)
    elif recorded is None or generation > recorded:
        provider.record_generation(reference.key_id, NVRAM_ROLE, generation)
    return generation


class VmNvramStore:
    """StateStore for ``vtpm serve --vm``: the vTPM section of the VM's (encrypted) .nvram."""

    def __init__(self, home: VmHome, key: DataKey | None, *, keys: KeyManager | None = None, vm_id: str = "",
                 lock: VmLock | None = None, generation: int = 0) -> None:
        self.vm = home
        self.key = key
        self.nvram_file = VmFile(home.nvram_path, FileKind.NVRAM)
        self._keys = keys
        self._vm_id = vm_id
        self._vm_lock = lock
        self._generation = generation  # the latest generation read or written: saves go above it
        self._nvram: Nvram | None = None  # other sections, read once while we hold the lock

    @classmethod
    def open(cls, vmx: str | os.PathLike[str], home: str | None = None, *,
             accept_rollback: bool = False) -> "VmNvramStore":
        """Take the VM's lock (one vTPM per VM; none while an operation changes the VM), check the
        VM's files and the .nvram's generation, and unlock the VM's key."""
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
            generation = check_nvram_generation(vm, keys, state, accept_rollback=accept_rollback)
            lock.mark_vtpm(vm)
            store = cls(vm, key, keys=keys, vm_id=state.record.vm_id if state.record else "", lock=lock,
                        generation=generation)
            recover(store, accept_rollback=accept_rollback)  # what a served vTPM journaled becomes the .nvram's
            return store
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

    @property
    def generation(self) -> int:
        """The .nvram's container generation last read or written (0 for a clear .nvram)."""
        return self._generation

    def describe(self) -> str:
        """The .nvram path and whether it is encrypted, for messages (no secret)."""
        kind = "encrypted" if self.key else "unencrypted"
        return f"{self.vm.nvram_path} (vTPM section, {kind})"

    def journal_binding(self) -> JournalBinding:
        """Sealed under the DEK (HKDF, the journal's own label and salt), bound to this VM and file; the
        position is recorded at the key provider. A clear VM's journal has checksums only."""
        context = f"{self.nvram_file.label}\0{self._vm_id}".encode()
        if self.key is None:
            return JournalBinding(journal_path(self.vm), None, context)
        positions = ProviderPositions(self._keys, self.key) if self._keys is not None else None
        return JournalBinding(journal_path(self.vm), self.key.dek, context, positions)

    def load_raw(self) -> tuple[bytes | None, int]:
        """The vTPM section as stored (None without one) and the .nvram's generation, without the journal applied."""
        self._nvram = self._read_nvram()
        return self._nvram.vtpm_state, self._generation

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
        """A new generation of the .nvram (encrypted if the VM is), recorded at the key provider."""
        if self.key is None:
            write_atomic(self.vm.nvram_path, data)
            return
        header = container.write_file(self.vm.nvram_path, data, self.key, label=self.nvram_file.label,
                                      vm_id=self._vm_id, min_generation=self._generation + 1)
        self._generation = header.generation
        if self._keys is not None:
            reference = self.key.reference
            self._keys.provider(reference.provider_id).record_generation(reference.key_id, NVRAM_ROLE,
                                                                         header.generation)

    def load(self) -> TpmState | None:
        """The vTPM state in the .nvram, or None when no vTPM is attached; StateStoreError when the section is not a
        valid state."""
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


def fold_leftover_journal(vm: VmHome, keys: KeyManager) -> None:
    """Before an operation rewrites or copies the VM's files (encrypt, decrypt, rekey, backup): fold
    what a killed vTPM left in its journal into the .nvram. Otherwise the rewrite would make the journal
    stale and its acknowledged records would be lost. Skipped while an operation is interrupted (it
    must finish first; the vTPM cannot open until then either)."""
    if not (journal_path(vm).exists() and vm.nvram_path.exists()) or Journal.load(vm) is not None:
        return
    try:
        VmNvramStore.open(vm.vmx_path, home=str(keys.registry.home)).close()
    except VmBusyError:
        return  # served right now (its journal is live) or another operation runs: the caller's lock says so


def accept_journal_rollback(provider: KeyProvider, key_id: str, generation: int) -> None:
    """Accept the journal on disk, whatever it holds, for an .nvram of ``generation`` (an accepted
    rollback of the .nvram or of its journal): the recorded position goes down to that generation."""
    provider.record_generation(key_id, NVRAM_JOURNAL_ROLE, position(generation, 0), allow_lower=True)


def accept_nvram_rollback(vmx: str | os.PathLike[str], home: str | None = None) -> int:
    """Take the VM's .nvram as it is now as its latest state (lowering the key provider's record);
    return its generation."""
    with VmNvramStore.open(vmx, home=home, accept_rollback=True) as store:
        return store.generation
