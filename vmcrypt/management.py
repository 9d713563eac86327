"""The management plane in-process: a management home and the operations of a logged-in user.

``Management(home)`` holds the inventory, the key providers, the CA, the gate
and the vTPM supervisor of one management home; ``management.login(user,
password)`` gives a ``UserSession`` whose methods are the operations an operator
can ask for. Each method passes ``vmcrypt.gate.Gate.run`` once with its
``vmcrypt.rbac.Operation``: a refused operation raises ``PermissionDenied``
naming the missing privileges, is written to the audit log, and touches nothing
on disk. The management service (``vmcrypt.service``) serves these sessions over
HTTP; tests and embedders use them directly.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from vmcrypt import container, vtpm_command
from vmcrypt.admin_operations import AdminOperations
from vmcrypt.backup import Manifest, backup_vm, check_restorable, restore_vm
from vmcrypt.ca_keys import open_ca
from vmcrypt.clone import clone_vm
from vmcrypt.errors import RollbackError, VmcryptError, VmError
from vmcrypt.gate import Gate, PermissionDenied, Target, datastore_target, vm_target
from vmcrypt.inventory import ROOT, Inventory, InventoryError, VmRecord
from vmcrypt.keys import KeyManager
from vmcrypt.power import PowerEvent, PowerState, require_off
from vmcrypt.providers.registry import ProviderRegistry
from vmcrypt.rbac import Operation, Privilege
from vmcrypt.providers.trusted import on_host
from vmcrypt.snapshots import Snapshot, revert_snapshot, take_snapshot
from vmcrypt.trust.placement import destination, record_placement
from vmcrypt.suspend import (
    discard_suspend_state,
    read_suspend_state,
    restore_tpm_state,
    resume_tpm_state,
    save_tpm_state,
    suspend_file,
    write_suspend_state,
)
from vmcrypt.vm import VmHome, VmSpec, create_vm
from vmcrypt.vm_encryption import (
    NVRAM_ROLE,
    OperationResult,
    decrypt_vm,
    describe_vm,
    encrypt_vm,
    read_vmx,
    rekey_vm,
    unlist_home_file,
)
from vmcrypt.vm_lock import lock_vm
from vmcrypt.vm_move import move_vm
from vmcrypt.vm_vtpm import VmNvramStore, accept_journal_rollback, fold_leftover_journal
from vmcrypt.vtpm_provision import ProvisionedEk, add_vtpm, set_vtpm_present
from vmcrypt.vtpm_supervisor import VtpmSupervisor

__all__ = ["Management", "PermissionDenied", "UserSession"]

CONSOLE_TICKET_LIFETIME = datetime.timedelta(minutes=2)
T = TypeVar("T")


class Management:
    """One management home opened in-process: its inventory, key providers, CA, gate and vTPM supervisor.

    Log in with ``login`` to get a ``UserSession``; ``close`` releases the inventory.
    """
    def __init__(self, home: str | os.PathLike[str], *, create_inventory: bool = True,
                 keys: KeyManager | None = None, db_url: str | None = None) -> None:
        """``create_inventory=False``: refuse a home without an inventory instead of starting an empty one.
        ``keys``: the key manager to use (e.g. one whose native store is unlocked by a passphrase).
        ``db_url``: the inventory's database (default: see ``vmcrypt.inventory_db``)."""
        self.home = Path(home)
        self.inventory = Inventory(self.home, create=create_inventory, url=db_url)
        self.keys = keys or KeyManager(ProviderRegistry(self.home))
        self.ca = open_ca(self.home, self.keys)
        self.gate = Gate(self.inventory)
        self.supervisor = VtpmSupervisor(self.home, vtpm_command.command_line)

    def close(self) -> None:
        """Close the inventory database."""
        self.inventory.close()

    def bootstrap(self, admin: str, password: str) -> None:
        """The first user, Administrator on the root; refused once any user exists."""
        if self.inventory.users():
            raise InventoryError("the inventory already has users: log in as an administrator instead")
        self.inventory.add_user(admin, password)
        self.inventory.grant(ROOT, admin, "Administrator")
        self.inventory.audit(admin, "bootstrap", "root", "ok", "first administrator")

    def login(self, user: str, password: str) -> "UserSession":
        """A session for ``user``; a wrong user name or password raises InventoryError and is audited."""
        try:
            self.inventory.authenticate(user, password)
        except InventoryError:
            self.inventory.audit(user, "login", "", "denied", "bad user name or password")
            raise
        return UserSession(self, user)


def check_name(name: str, what: str = "VM") -> str:
    """A VM's name is one plain directory name: no separator, not hidden, not '.' or '..'."""
    if not name or "/" in name or "\\" in name or "\0" in name or name.startswith(".") or len(name) > 200:
        raise InventoryError(f"{what} name {name!r} is not a plain name (no '/', not starting with '.')")
    return name


def _nvram_generation(vm: VmHome, key_id: str | None, previous: VmRecord | None) -> int | None:
    """The latest generation of the VM's encrypted .nvram under ``key_id`` that the inventory has seen:
    what is on disk now or what it recorded before, whichever is higher (an older file does not lower it)."""
    if key_id is None:
        return None
    seen = []
    if previous is not None and previous.key_id == key_id and previous.nvram_generation is not None:
        seen.append(previous.nvram_generation)
    try:
        header = container.read_header(vm.nvram_path)
        if header.reference.key_id == key_id:
            seen.append(header.generation)
    except (OSError, VmcryptError):
        pass
    return max(seen) if seen else None


def _describe_on_disk(vmx: Path, datastore: str, previous: VmRecord | None = None) -> VmRecord:
    vm = VmHome(vmx)
    state = read_vmx(vm, None)
    settings = state.settings
    ref = state.reference
    return VmRecord(
        name=vm.name, vmx_path=str(vm.vmx_path.resolve()), datastore=datastore,
        hw_version=int(settings.get("virtualHW.version", "0") or 0), firmware=(settings.get("firmware") or "bios").lower(),
        encrypted=ref is not None, provider_id=ref.provider_id if ref else None, key_id=ref.key_id if ref else None,
        vtpm=(settings.get("vtpm.present") or "").upper() == "TRUE",
        power_state=previous.power_state if previous else PowerState.OFF,
        vtpm_pid=previous.vtpm_pid if previous else None, vtpm_port=previous.vtpm_port if previous else None,
        nvram_generation=_nvram_generation(vm, ref.key_id if ref else None, previous),
    )


def _is_path_of(path: str | os.PathLike[str], record: VmRecord) -> bool:
    """``path`` (absolute, as given) names the VM's .vmx or its directory; nothing on disk is looked at."""
    wanted = os.path.normpath(os.path.abspath(path))
    return wanted in (record.vmx_path, os.path.dirname(record.vmx_path))


class UserSession(AdminOperations):
    """The operations one logged-in user may ask for; each is checked against the user's roles and audited.

    VM operations take the inventory name of the VM; a refused one raises
    PermissionDenied and changes nothing.
    """
    def __init__(self, management: Management, user: str) -> None:
        self.m = management
        self.user = user

    @property
    def inventory(self) -> Inventory:
        """The inventory of the management service this session acts through."""
        return self.m.inventory

    # ------------------------------------------------------------------ the one gate

    def run(self, operation: Operation, target: Target, act: Callable[[], T],
            detail: str | Callable[[], str] = "") -> T:
        """Run ``act`` if the user holds ``operation``'s privileges on ``target``; audit the outcome."""
        return self.m.gate.run(self.user, operation, target, act, detail)

    def _on_vm(self, operation: Operation, name: str, act: Callable[[VmRecord, VmHome], T],
               detail: str | Callable[[], str] = "") -> T:
        """``operation`` on the inventory's VM ``name``; an unknown or unreadable VM is a failure, audited."""
        def once() -> T:  # one transaction: the VM's row stays locked until the operation is audited
            try:
                self.inventory.vm(name, lock=True)
                record, vm = self._vm(name)
            except VmcryptError as exc:
                self.inventory.audit(self.user, operation.value, f"vm {name}", "failed", str(exc))
                raise
            return self.run(operation, vm_target(name, record.encrypted), lambda: act(record, vm), detail)
        return self.m.gate.attempt(self.user, operation, f"vm {name}", once)

    def _vm(self, name: str) -> tuple[VmRecord, VmHome]:
        record = self.inventory.vm(name)
        fresh = _describe_on_disk(Path(record.vmx_path), record.datastore, record)
        if fresh != record:  # written under the row's lock, from what the inventory holds then
            with self.inventory.operation():
                record = self.inventory.vm(name, lock=True)
                fresh = _describe_on_disk(Path(record.vmx_path), record.datastore, record)
                if fresh != record:
                    self.inventory.put_vm(fresh)
        return fresh, VmHome(fresh.vmx_path)

    def _refresh(self, name: str) -> VmRecord:
        return self._vm(name)[0]

    def _put_power(self, record: VmRecord, state: PowerState, pid: int | None = None, port: int | None = None,
                   **changes: object) -> VmRecord:
        updated = replace(record, power_state=state, vtpm_pid=pid, vtpm_port=port, **changes)
        self.inventory.put_vm(updated)
        return updated

    # ------------------------------------------------------------------ lookups (no operation of their own)

    def vm_at(self, path: str | os.PathLike[str]) -> VmRecord:
        """The VM this user can see whose .vmx (or directory) is ``path``."""
        for record in self.vms():
            if _is_path_of(path, record):
                return record
        raise InventoryError(f"no VM at {os.path.abspath(path)} in the inventory (register it first)")

    def datastore_of(self, path: str | os.PathLike[str]) -> str:
        """The registered datastore a path lies in."""
        target = Path(path).resolve()
        for name, root in self.inventory.datastores():
            if Path(root) == target or Path(root) in target.parents:
                return name
        raise InventoryError(f"{target} is not inside a datastore of the inventory")

    def register_created(self, vmx: str | os.PathLike[str], datastore: str) -> VmRecord:
        """Add a VM home just created at ``vmx`` on ``datastore`` to the inventory."""
        record = _describe_on_disk(Path(vmx), datastore)
        self.inventory.put_vm(record)
        return record

    # ------------------------------------------------------------------ inventory of VMs

    def vms(self, path: str | os.PathLike[str] | None = None) -> list[VmRecord]:
        """The VMs this user may at least see (System.View on them); with ``path``, the one there."""
        def act() -> list[VmRecord]:
            visible = [self._refresh(r.name) for r in self.inventory.vms()
                       if Privilege.SYSTEM_VIEW in self.inventory.privileges(self.user, ("vm", r.name))]
            return [r for r in visible if path is None or _is_path_of(path, r)]
        return self.run(Operation.LIST_VMS, Target(), act)

    def vm(self, name: str) -> VmRecord:
        """The inventory record of the named VM."""
        return self._refresh(name)

    def describe(self, name: str) -> dict:
        """What the named VM holds and how it is encrypted (files, key provider, vTPM), as a dict."""
        return self._on_vm(Operation.DESCRIBE_VM, name, lambda record, vm: describe_vm(vm, self.m.keys))

    def create_vm(self, datastore: str, name: str, spec: VmSpec | None = None) -> VmRecord:
        """A new VM in directory ``name`` of ``datastore`` (the VM is named ``spec.name``, by default ``name``)."""
        def act() -> VmRecord:
            directory = self.inventory.datastore_path(datastore) / check_name(name)
            wanted = spec or VmSpec(name=name)
            check_name(wanted.name)
            vm = create_vm(directory, wanted)
            return self.register_created(vm.vmx_path, datastore)
        return self.run(Operation.CREATE_VM, datastore_target(datastore), act)

    def register_vm(self, vmx: str | os.PathLike[str], datastore: str) -> VmRecord:
        """Add an existing VM (restored, copied, or from another management home) to the inventory."""
        vm = VmHome(vmx)
        record = _describe_on_disk(vm.vmx_path, datastore)

        def act() -> VmRecord:
            root = self.inventory.datastore_path(datastore)
            if root not in Path(record.vmx_path).parents:
                raise VmError(f"the VM is not inside datastore '{datastore}' ({root})", vm.vmx_path)
            if any(r.name == record.name for r in self.inventory.vms()):
                raise InventoryError(f"a VM named '{record.name}' is already in the inventory")
            if record.encrypted:
                self.m.keys.unlock(read_vmx(vm, None).reference)  # the key provider must deliver its key
            self.inventory.put_vm(record)
            return record
        return self.run(Operation.REGISTER, datastore_target(datastore, record.encrypted), act)

    def unregister_vm(self, name: str) -> None:
        """Remove the VM from the inventory; its files stay on disk."""
        def act(record: VmRecord, vm: VmHome) -> None:
            require_off(record.power_state, record.vmx_path)
            self.inventory.remove_vm(name)
        self._on_vm(Operation.UNREGISTER, name, act)

    def delete_vm(self, name: str, *, destroy_key: bool = False) -> None:
        """Remove the VM from the inventory and its directory from the datastore.

        The VM's KEK stays at its provider unless ``destroy_key``: backups of the VM
        remain restorable only while it exists. Destroying it needs Cryptographer.ManageKeys.
        """
        def act(record: VmRecord, vm: VmHome) -> None:
            require_off(record.power_state, record.vmx_path)
            with lock_vm(vm, "delete"):
                shutil.rmtree(vm.directory)
            self.inventory.remove_vm(name)
            if destroy_key and record.provider_id and record.key_id:
                self.m.keys.registry.get(record.provider_id).destroy_key(record.key_id)
        self._on_vm(Operation.DELETE_WITH_KEY if destroy_key else Operation.DELETE, name, act)

    def _destination(self, record: VmRecord, host: str | None) -> str | None:
        """The host an operation puts the VM on; a VM on a trusted key provider only onto an attested one."""
        return destination(self.m.keys, self.inventory.hosts(), record.provider_id, host)

    @contextlib.contextmanager
    def _keys_on_host(self, record: VmRecord, host: str | None, provider: str | None = None) -> Iterator[None]:
        """Key work on the VM (its current provider, else ``provider`` or the default) done by ``host``: for a
        trusted key provider an attested host (by default the first), whose agent fetches the keys;
        afterwards the VM's key is placed there."""
        provider_id = record.provider_id or self.m.keys.provider(provider).provider_id
        placed = destination(self.m.keys, self.inventory.hosts(), provider_id, host)
        with on_host(placed):
            yield
        after = self._refresh(record.name)
        record_placement(self.m.keys, after.provider_id, after.key_id, placed)

    def migrate(self, name: str, datastore: str, *, host: str | None = None) -> VmRecord:
        """Cold migration to another datastore of this inventory (the files move; keys do not change).
        ``host``: the destination host (a VM on a trusted key provider goes only to an attested host)."""
        def act(record: VmRecord, vm: VmHome) -> VmRecord:
            require_off(record.power_state, record.vmx_path)
            if datastore == record.datastore:
                raise VmError(f"the VM is already on datastore '{datastore}'", vm.vmx_path)
            self._destination(record, host)

            def adopt(vmx: Path) -> VmRecord:
                moved = _describe_on_disk(vmx, datastore, record)
                if moved.vtpm:
                    self.m.ca.relocate_vm(record.vmx_path, moved.vmx_path)
                self.inventory.put_vm(moved)
                return moved
            return move_vm(vm, self.inventory.datastore_path(datastore) / vm.directory.name, adopt)
        return self._on_vm(Operation.MIGRATE, name, act,
                           detail=f"to {datastore}" + (f" on host {host}" if host else ""))

    def migrate_to_home(self, name: str, target: "UserSession", datastore: str) -> VmRecord:
        """Cold migration to another management home (another installation) sharing the key provider.

        Refused while the VM runs (no live migration across installations) and when the
        target cannot fetch the VM's key; the source stays whole until the target has
        registered the copy.
        """
        def act(record: VmRecord, vm: VmHome) -> VmRecord:
            require_off(record.power_state, record.vmx_path, "live migration to another management home is not "
                        "supported: power the VM off first")
            reference = read_vmx(vm, None).reference
            if reference is not None:
                try:
                    target.m.keys.unlock(reference)
                except VmcryptError as exc:
                    raise VmError(f"the target management home has no access to the VM's key provider: {exc.reason}",
                                  vm.vmx_path) from None

            def adopt(vmx: Path) -> VmRecord:
                moved = target.register_vm(vmx, datastore)
                self.inventory.remove_vm(name)
                return moved
            return move_vm(vm, target.inventory.datastore_path(datastore) / vm.directory.name, adopt)
        return self._on_vm(Operation.MIGRATE_AWAY, name, act, detail=f"to {target.m.home} datastore {datastore}")

    def clone(self, name: str, new_name: str, *, exact: bool = False, host: str | None = None) -> VmRecord:
        """A new VM in the same datastore; new identity unless ``exact`` (which needs Cryptographer.Clone).
        ``host``: the host that makes the clone (a VM on a trusted key provider: an attested host)."""
        def act(record: VmRecord, vm: VmHome) -> VmRecord:
            require_off(record.power_state, record.vmx_path)
            if any(r.name == new_name for r in self.inventory.vms()):
                raise InventoryError(f"a VM named '{new_name}' is already in the inventory")
            target = self.inventory.datastore_path(record.datastore) / check_name(new_name)
            with on_host(self._destination(record, host)):
                clone = clone_vm(vm, target, new_name, self.m.keys, self.m.ca, exact=exact)
            return self.register_created(clone.vmx_path, record.datastore)
        return self._on_vm(Operation.CLONE_EXACT if exact else Operation.CLONE, name, act, detail=new_name)

    def snapshot(self, name: str) -> Snapshot:
        """Take a snapshot of the powered-off VM (its .nvram inside an encrypted .vmsn)."""
        def act(record: VmRecord, vm: VmHome) -> Snapshot:
            require_off(record.power_state, record.vmx_path)
            return take_snapshot(vm, str(self.m.home))
        return self._on_vm(Operation.SNAPSHOT, name, act)

    def revert(self, name: str, number: int | None = None) -> Snapshot:
        """Go back to snapshot ``number`` (default: the latest)."""
        def act(record: VmRecord, vm: VmHome) -> Snapshot:
            require_off(record.power_state, record.vmx_path)
            return revert_snapshot(vm, self.m.keys, str(self.m.home), number)
        return self._on_vm(Operation.REVERT, name, act)

    # ------------------------------------------------------------------ backup and restore

    def backup(self, name: str, destination: str | os.PathLike[str], *, include_disks: bool = True,
               progress: Callable | None = None) -> Manifest:
        """Write the VM to a tar archive at ``destination`` (encrypted files as they are, with a manifest)."""
        def act(record: VmRecord, vm: VmHome) -> Manifest:
            require_off(record.power_state, record.vmx_path)
            return backup_vm(vm, self.m.keys, destination, include_disks=include_disks, progress=progress)
        return self._on_vm(Operation.BACKUP, name, act, detail=str(destination))

    def restore(self, archive: str | os.PathLike[str], datastore: str) -> VmRecord:
        """Check the archive and the key first; then restore into the datastore and register."""
        try:
            manifest = check_restorable(archive, self.m.keys)
        except VmcryptError as exc:
            self.inventory.audit(self.user, Operation.RESTORE.value, f"datastore {datastore}", "failed", str(exc))
            raise

        def act() -> VmRecord:
            if any(r.name == manifest.vm for r in self.inventory.vms()):
                raise InventoryError(f"a VM named '{manifest.vm}' is already in the inventory")
            vm = restore_vm(archive, self.inventory.datastore_path(datastore) / manifest.vm, self.m.keys)
            return self.register_created(vm.vmx_path, datastore)
        return self.run(Operation.RESTORE, datastore_target(datastore, manifest.encrypted), act, detail=str(archive))

    # ------------------------------------------------------------------ encryption and the vTPM

    def provision_vtpm(self, name: str, *, host: str | None = None) -> tuple[VmRecord, list[ProvisionedEk]]:
        """Add a vTPM (encrypting the VM first); the VM and the EKs whose certificates went into its NV."""
        def act(record: VmRecord, vm: VmHome) -> tuple[VmRecord, list[ProvisionedEk]]:
            require_off(record.power_state, record.vmx_path)
            with self._keys_on_host(record, host):
                eks = add_vtpm(vm, self.m.keys, self.m.ca)
            return self._refresh(name), eks
        return self._on_vm(Operation.ADD_VTPM, name, act)

    def add_vtpm(self, name: str, *, host: str | None = None) -> VmRecord:
        """Give the VM a newly manufactured vTPM (encrypting the VM first if it is not); ``host``: as for
        ``encrypt``."""
        return self.provision_vtpm(name, host=host)[0]

    def remove_vtpm(self, name: str) -> VmRecord:
        """Remove the VM's vTPM and its state."""
        def act(record: VmRecord, vm: VmHome) -> VmRecord:
            require_off(record.power_state, record.vmx_path)
            if not record.vtpm:
                raise VmError("the VM has no vTPM", vm.vmx_path)
            with lock_vm(vm, "remove the vTPM"):
                with VmNvramStore.open(vm.vmx_path, home=str(self.m.home)) as store:
                    store.load()
                    store.save(None)
                set_vtpm_present(vm, self.m.keys, False)
            return self._refresh(name)
        return self._on_vm(Operation.REMOVE_VTPM, name, act)

    def crypt(self, operation: Operation, name: str, *, provider: str | None = None, include_disks: bool = False,
              deep: bool = False, progress: Callable | None = None,
              host: str | None = None) -> tuple[VmRecord, OperationResult]:
        """Encrypt, decrypt or rekey the powered-off VM; the VM afterwards and what changed. ``host``: the host
        that does it (with a trusted key provider: an attested host, by default the first)."""
        def act(record: VmRecord, vm: VmHome) -> tuple[VmRecord, OperationResult]:
            require_off(record.power_state, record.vmx_path)
            with self._keys_on_host(record, host, provider):
                return crypt(record, vm)

        def crypt(record: VmRecord, vm: VmHome) -> tuple[VmRecord, OperationResult]:
            fold_leftover_journal(vm, self.m.keys)  # what a killed vTPM journaled, before the .nvram is rewritten
            if operation is Operation.ENCRYPT:
                result = encrypt_vm(vm, self.m.keys, provider=provider, include_disks=include_disks, progress=progress)
            elif operation is Operation.DECRYPT:
                if record.vtpm:
                    raise VmError("a VM with a vTPM stays encrypted: remove the vTPM first", vm.vmx_path)
                result = decrypt_vm(vm, self.m.keys, progress=progress)
            elif operation is Operation.REKEY:
                result = rekey_vm(vm, self.m.keys, deep=deep, provider=provider, progress=progress)
            else:
                raise ValueError(f"{operation.value} is not an encryption operation")
            return self._refresh(name), result
        return self._on_vm(operation, name, act)

    def encrypt(self, name: str, *, include_disks: bool = False, provider: str | None = None,
                progress: Callable | None = None, host: str | None = None) -> VmRecord:
        """Encrypt the powered-off VM's home files (``vmcrypt vm encrypt``).

        ``include_disks``: also its virtual disks (``--disks``); ``provider``: key
        provider name or id, default the home's default provider (``--provider``);
        ``progress``: called as the files are processed.
        """
        return self.crypt(Operation.ENCRYPT, name, provider=provider, include_disks=include_disks,
                          progress=progress, host=host)[0]

    def decrypt(self, name: str, *, progress: Callable | None = None) -> VmRecord:
        """Decrypt the powered-off VM, disks included (refused while it has a vTPM)."""
        return self.crypt(Operation.DECRYPT, name, progress=progress)[0]

    def rekey(self, name: str, *, deep: bool = False, provider: str | None = None,
              progress: Callable | None = None, host: str | None = None) -> VmRecord:
        """New KEK for the VM (``provider``: move it to that provider); ``deep``: also a new DEK, every file re-encrypted."""
        return self.crypt(Operation.REKEY, name, deep=deep, provider=provider, progress=progress, host=host)[0]

    # ------------------------------------------------------------------ power

    def power_on(self, name: str, *, accept_rollback: bool = False, port: int | None = None,
                 data_unix: str | os.PathLike[str] | None = None, host: str | None = None) -> VmRecord:
        """Serve the VM's vTPM. A rolled-back .nvram (older than the generation the inventory or the key
        provider recorded) is refused, unless ``accept_rollback``: then it is accepted as the latest, audited.

        ``port``: the vTPM's TCP data port (control on ``port + 1``; a port in use is an
        error); by default a free pair is chosen. ``data_unix``: also serve the data
        channel on this Unix socket path. The record's ``vtpm_port`` says which port.
        ``host``: the host to power on (a VM on a trusted key provider: only a host its Trust Authority
        attested; by default the first attested one)."""
        accepted = ""

        def act(record: VmRecord, vm: VmHome) -> VmRecord:
            nonlocal accepted
            state = PowerState(record.power_state).after(PowerEvent.POWER_ON)
            pid = served = None
            generation = record.nvram_generation
            placed = self._destination(record, host)
            record_placement(self.m.keys, record.provider_id, record.key_id, placed)
            if record.vtpm:
                accepted, generation = self._check_rollback(record, vm, accept_rollback)
                pid, served = self.m.supervisor.start(
                    vm, port=port, data_unix=None if data_unix is None else os.fspath(data_unix))
            return self._put_power(record, state, pid, served, nvram_generation=generation)
        operation = Operation.POWER_ON_ACCEPT_ROLLBACK if accept_rollback else Operation.POWER_ON
        return self._on_vm(operation, name, act, detail=lambda: accepted)

    def accept_rollback(self, name: str) -> int | None:
        """Take the powered-off VM's .nvram as it is now as its latest state (audited); return its generation."""
        accepted = ""

        def act(record: VmRecord, vm: VmHome) -> int | None:
            nonlocal accepted
            require_off(record.power_state, record.vmx_path)
            accepted, generation = self._check_rollback(record, vm, True)
            self.inventory.put_vm(replace(record, nvram_generation=generation))
            return generation
        return self._on_vm(Operation.ACCEPT_ROLLBACK, name, act,
                           detail=lambda: accepted or "nothing to accept: the .nvram is the latest saved")

    def _check_rollback(self, record: VmRecord, vm: VmHome, accept: bool) -> tuple[str, int | None]:
        """Compare the .nvram's generation with the latest the inventory and the key provider recorded.
        Returns (what was accepted, for the audit log; the generation to record)."""
        reference = read_vmx(vm, None).reference
        if reference is None or not container.is_container(vm.nvram_path):
            return "", record.nvram_generation
        header = container.read_header(vm.nvram_path)
        if header.reference.key_id != reference.key_id:
            return "", record.nvram_generation  # not the VM's key: the vTPM refuses it, saying why
        provider = self.m.keys.provider(reference.provider_id)
        if accept:  # the vTPM also checks its journal's recorded position: accepted along with the .nvram
            accept_journal_rollback(provider, reference.key_id, header.generation)
        recorded = [g for g in (record.nvram_generation if record.key_id == reference.key_id else None,
                                provider.generation(reference.key_id, NVRAM_ROLE)) if g is not None]
        latest = max(recorded, default=None)
        if latest is None or header.generation >= latest:
            return "", max(header.generation, latest or 0)
        if not accept:
            raise RollbackError(
                f"generation {header.generation} is older than the last saved generation {latest}: the file was "
                "rolled back (an older copy was put in its place); if that was deliberate, power on with "
                "--accept-rollback", vm.nvram_path)
        provider.record_generation(reference.key_id, NVRAM_ROLE, header.generation, allow_lower=True)
        return (f"accepted a rolled-back {vm.nvram_path.name}: generation {header.generation}, "
                f"last saved {latest}"), header.generation

    def suspend(self, name: str) -> VmRecord:
        """Save the vTPM's state (Shutdown(STATE)) into the encrypted .vmss and stop it."""
        def act(record: VmRecord, vm: VmHome) -> VmRecord:
            state = PowerState(record.power_state).after(PowerEvent.SUSPEND)
            started = save_tpm_state(record.vtpm_port) if record.vtpm_port else False
            self.m.supervisor.stop(vm)
            write_suspend_state(vm, str(self.m.home), started)
            return self._put_power(record, state)
        return self._on_vm(Operation.SUSPEND, name, act)

    def resume(self, name: str, *, host: str | None = None) -> VmRecord:
        """Power on from the .vmss: the vTPM comes back with Startup(STATE), its PCRs as they were.
        ``host``: as for ``power_on``."""
        def act(record: VmRecord, vm: VmHome) -> VmRecord:
            state = PowerState(record.power_state).after(PowerEvent.RESUME)
            placed = self._destination(record, host)
            if record.vtpm:
                self._check_rollback(record, vm, False)
            record_placement(self.m.keys, record.provider_id, record.key_id, placed)
            with on_host(placed):
                body = read_suspend_state(vm, self.m.keys)
                restore_tpm_state(vm, str(self.m.home), body)
                unlist_home_file(vm, self.m.keys, suspend_file(vm))  # before the vTPM holds the VM's lock
            pid = port = None
            if record.vtpm:
                pid, port = self.m.supervisor.start(vm)
                if body.get("tpm_started"):
                    try:
                        resume_tpm_state(port, vm.vmx_path)
                    except VmError:
                        self.m.supervisor.stop(vm)
                        raise
            suspend_file(vm).path.unlink()
            return self._put_power(record, state, pid, port)
        return self._on_vm(Operation.RESUME, name, act)

    def power_off(self, name: str) -> VmRecord:
        """Stop serving the VM's vTPM and mark it off."""
        def act(record: VmRecord, vm: VmHome) -> VmRecord:
            before = PowerState(record.power_state)
            state = before.after(PowerEvent.POWER_OFF)
            if record.vtpm_pid or record.vtpm_port:
                self.m.supervisor.stop(vm)
            if before is PowerState.SUSPENDED:  # discards the suspended state: the next power on is cold
                discard_suspend_state(vm, self.m.keys)
            seen = _describe_on_disk(vm.vmx_path, record.datastore, record)  # the generation the vTPM left
            return self._put_power(record, state, nvram_generation=seen.nvram_generation)
        return self._on_vm(Operation.POWER_OFF, name, act)

    # ------------------------------------------------------------------ console and files

    def open_console(self, name: str) -> str:
        """A short-lived console ticket for the powered-on VM."""
        return self._on_vm(Operation.CONSOLE, name, lambda record, vm: self.inventory.issue_console_ticket(
            name, self.user, CONSOLE_TICKET_LIFETIME))

    def browse(self, name: str) -> list[str]:
        """The names of the files in the VM's directory."""
        return self._on_vm(Operation.BROWSE, name, lambda record, vm: sorted(
            p.name for p in vm.directory.iterdir() if p.is_file() and not p.name.startswith(".")))

    def download(self, name: str, filename: str) -> bytes:
        """The contents of one file of the VM's directory (encrypted files as they are on disk)."""
        def act(record: VmRecord, vm: VmHome) -> bytes:
            path = (vm.directory / filename).resolve()
            if path.parent != vm.directory.resolve() or not path.is_file():
                raise VmError(f"no file '{filename}' in the VM's directory", vm.directory)
            return path.read_bytes()
        return self._on_vm(Operation.DOWNLOAD, name, act, detail=filename)
