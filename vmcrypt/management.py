"""VM lifecycle for a logged-in user: every call checks privileges, acts, and is audited.

``Management(home)`` holds the inventory, the key providers and the CA of one
management home; ``management.login(user, password)`` gives a ``UserSession``
whose methods are the operations an operator can ask for. A refused operation
raises ``PermissionDenied`` naming the missing privileges, is written to the
audit log, and touches nothing on disk.
"""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from vmcrypt import container, vtpm_command
from vmcrypt.backup import Manifest, backup_vm, check_restorable, restore_vm
from vmcrypt.ca_keys import open_ca
from vmcrypt.clone import clone_vm
from vmcrypt.errors import RollbackError, VmcryptError, VmError
from vmcrypt.inventory import ROOT, Inventory, InventoryError, VmRecord
from vmcrypt.keys import KeyManager
from vmcrypt.providers.registry import ProviderRegistry
from vmcrypt.rbac import Operation, Privilege, missing_privileges
from vmcrypt.snapshots import Snapshot, revert_snapshot, take_snapshot
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
from vmcrypt.vm_encryption import NVRAM_ROLE, decrypt_vm, encrypt_vm, read_vmx, rekey_vm, unlist_home_file
from vmcrypt.vm_lock import lock_vm
from vmcrypt.vm_vtpm import VmNvramStore
from vmcrypt.vtpm_provision import add_vtpm, set_vtpm_present
from vtpm.server.sockets import free_port_pair

CONSOLE_TICKET_LIFETIME = datetime.timedelta(minutes=2)
POWER_ON_TIMEOUT = 30.0
# What a vTPM process gets from our environment: nothing secret (no $VMCRYPT_PASSWORD, no passphrases).
CHILD_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "PYTHONPATH", "TMPDIR")
T = TypeVar("T")


class PermissionDenied(VmcryptError):
    """The user lacks a privilege; ``missing`` lists which."""

    def __init__(self, user: str, operation: Operation, entity: str, missing: list[Privilege]) -> None:
        self.missing = missing
        names = ", ".join(p.value for p in missing)
        super().__init__(f"'{user}' may not {operation.value} on {entity}: missing privilege {names}")


class Management:
    def __init__(self, home: str | os.PathLike[str], *, create_inventory: bool = True) -> None:
        """``create_inventory=False``: refuse a home without an inventory instead of starting an empty one."""
        self.home = Path(home)
        self.inventory = Inventory(self.home, create=create_inventory)
        self.keys = KeyManager(ProviderRegistry(self.home))
        self.ca = open_ca(self.home, self.keys)

    def close(self) -> None:
        self.inventory.close()

    def bootstrap(self, admin: str, password: str) -> None:
        """The first user, Administrator on the root; refused once any user exists."""
        if self.inventory.users():
            raise InventoryError("the inventory already has users: log in as an administrator instead")
        self.inventory.add_user(admin, password)
        self.inventory.grant(ROOT, admin, "Administrator")
        self.inventory.audit(admin, "bootstrap", "root", "ok", "first administrator")

    def login(self, user: str, password: str) -> "UserSession":
        try:
            self.inventory.authenticate(user, password)
        except InventoryError:
            self.inventory.audit(user, "login", "", "denied", "bad user name or password")
            raise
        return UserSession(self, user)


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
        power_state=previous.power_state if previous else "off",
        vtpm_pid=previous.vtpm_pid if previous else None, vtpm_port=previous.vtpm_port if previous else None,
        nvram_generation=_nvram_generation(vm, ref.key_id if ref else None, previous),
    )


class UserSession:
    def __init__(self, management: Management, user: str) -> None:
        self.m = management
        self.user = user

    @property
    def inventory(self) -> Inventory:
        return self.m.inventory

    # ------------------------------------------------------------------ the one gate

    def checked(self, operation: Operation, entity: tuple[str, str], encrypted: bool, action: Callable[[], T],
                detail: str | Callable[[], str] = "") -> T:
        """Run ``action`` if this user holds what ``operation`` needs on ``entity``; audit the outcome.

        ``detail`` may be a function, asked after the action succeeded (what it did)."""
        label = f"{entity[0]} {entity[1]}".strip()
        missing = missing_privileges(self.inventory.privileges(self.user, entity), operation, encrypted)
        if missing:
            self.inventory.audit(self.user, operation.value, label, "denied",
                                 "missing " + ", ".join(p.value for p in missing))
            raise PermissionDenied(self.user, operation, label, missing)
        try:
            result = action()
        except Exception as exc:
            self.inventory.audit(self.user, operation.value, label, "failed", str(exc))
            raise
        self.inventory.audit(self.user, operation.value, label, "ok", detail() if callable(detail) else detail)
        return result

    def _vm(self, name: str) -> tuple[VmRecord, VmHome]:
        record = self.inventory.vm(name)
        fresh = _describe_on_disk(Path(record.vmx_path), record.datastore, record)
        if fresh != record:
            self.inventory.put_vm(fresh)
        return fresh, VmHome(fresh.vmx_path)

    def vm_at(self, vmx: str | os.PathLike[str]) -> VmRecord:
        """The inventory's VM whose .vmx is ``vmx`` (a file or the VM's directory)."""
        wanted = str(VmHome(vmx).vmx_path.resolve())
        for record in self.inventory.vms():
            if record.vmx_path == wanted:
                return self._refresh(record.name)
        raise InventoryError(f"no VM at {wanted} in the inventory (register it first)")

    def datastore_of(self, path: str | os.PathLike[str]) -> str:
        """The registered datastore a path lies in."""
        target = Path(path).resolve()
        for name, root in self.inventory.db.execute("SELECT name, path FROM datastores"):
            if Path(root) == target or Path(root) in target.parents:
                return name
        raise InventoryError(f"{target} is not inside a datastore of the inventory")

    def register_created(self, vmx: str | os.PathLike[str], datastore: str) -> VmRecord:
        record = _describe_on_disk(Path(vmx), datastore)
        self.inventory.put_vm(record)
        return record

    def _refresh(self, name: str) -> VmRecord:
        return self._vm(name)[0]

    def _require_off(self, record: VmRecord) -> None:
        if record.power_state != "off":
            raise VmError("the VM must be powered off first", record.vmx_path)

    # ------------------------------------------------------------------ inventory

    def create_vm(self, datastore: str, name: str, spec: VmSpec | None = None) -> VmRecord:
        def act() -> VmRecord:
            directory = self.inventory.datastore_path(datastore) / name
            vm = create_vm(directory, spec or VmSpec(name=name))
            record = _describe_on_disk(vm.vmx_path, datastore)
            self.inventory.put_vm(record)
            return record
        return self.checked(Operation.CREATE_VM, ("datastore", datastore), False, act)

    def vm(self, name: str) -> VmRecord:
        return self._refresh(name)

    def vms(self) -> list[VmRecord]:
        """The VMs this user may at least see."""
        return [self._refresh(r.name) for r in self.inventory.vms()
                if Privilege.SYSTEM_VIEW in self.inventory.privileges(self.user, ("vm", r.name))]

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
        return self.checked(Operation.REGISTER, ("datastore", datastore), record.encrypted, act)

    def unregister_vm(self, name: str) -> None:
        record, _ = self._vm(name)

        def act() -> None:
            self._require_off(record)
            self.inventory.remove_vm(name)
        self.checked(Operation.UNREGISTER, ("vm", name), record.encrypted, act)

    def migrate(self, name: str, datastore: str) -> VmRecord:
        """Cold migration to another datastore of this inventory (the files move; keys do not change)."""
        record, vm = self._vm(name)

        def act() -> VmRecord:
            self._require_off(record)
            target = self.inventory.datastore_path(datastore) / vm.directory.name
            if target.exists():
                raise VmError(f"{target} already exists", target)
            if datastore == record.datastore:
                raise VmError(f"the VM is already on datastore '{datastore}'", vm.vmx_path)
            with lock_vm(vm, "migrate"):
                staging = target.with_name(f".{target.name}.migrating")
                shutil.rmtree(staging, ignore_errors=True)
                shutil.copytree(vm.directory, staging)  # the source stays whole until the copy is complete
                staging.rename(target)
                moved = _describe_on_disk(target / vm.vmx_path.name, datastore, record)
                self.inventory.put_vm(moved)
                if moved.vtpm:
                    self.m.ca.relocate_vm(record.vmx_path, moved.vmx_path)
                shutil.rmtree(vm.directory)
            return moved
        return self.checked(Operation.MIGRATE, ("vm", name), record.encrypted, act, detail=f"to {datastore}")

    def backup(self, name: str, destination: str | os.PathLike[str], *, include_disks: bool = True,
               progress: Callable | None = None) -> Manifest:
        record, vm = self._vm(name)

        def act() -> Manifest:
            self._require_off(record)
            return backup_vm(vm, self.m.keys, destination, include_disks=include_disks, progress=progress)
        return self.checked(Operation.BACKUP, ("vm", name), record.encrypted, act, detail=str(destination))

    def restore(self, archive: str | os.PathLike[str], datastore: str) -> VmRecord:
        """Check the archive and the key first; then restore into the datastore and register."""
        manifest = check_restorable(archive, self.m.keys)

        def act() -> VmRecord:
            if any(r.name == manifest.vm for r in self.inventory.vms()):
                raise InventoryError(f"a VM named '{manifest.vm}' is already in the inventory")
            vm = restore_vm(archive, self.inventory.datastore_path(datastore) / manifest.vm, self.m.keys)
            return self.register_created(vm.vmx_path, datastore)
        return self.checked(Operation.RESTORE, ("datastore", datastore), manifest.encrypted, act, detail=str(archive))

    def migrate_to_home(self, name: str, target: "UserSession", datastore: str) -> VmRecord:
        """Cold migration to another management home (another installation) sharing the key provider.

        Refused while the VM runs (no live migration across installations) and when the
        target cannot fetch the VM's key; the source stays whole until the target has
        registered the copy.
        """
        record, vm = self._vm(name)

        def act() -> VmRecord:
            if record.power_state != "off":
                raise VmError("live migration to another management home is not supported: power the VM off first",
                              vm.vmx_path)
            reference = read_vmx(vm, None).reference
            if reference is not None:
                try:
                    target.m.keys.unlock(reference)
                except VmcryptError as exc:
                    raise VmError(f"the target management home has no access to the VM's key provider: {exc.reason}",
                                  vm.vmx_path) from None
            destination = target.inventory.datastore_path(datastore) / vm.directory.name
            if destination.exists():
                raise VmError(f"{destination} already exists", destination)
            with lock_vm(vm, "migrate"):
                staging = destination.with_name(f".{destination.name}.migrating")
                shutil.rmtree(staging, ignore_errors=True)
                shutil.copytree(vm.directory, staging)
                staging.rename(destination)
                try:
                    moved = target.register_vm(destination / vm.vmx_path.name, datastore)
                except BaseException:
                    shutil.rmtree(destination, ignore_errors=True)
                    raise
                self.inventory.remove_vm(name)
                shutil.rmtree(vm.directory)
            return moved
        return self.checked(Operation.MIGRATE_AWAY, ("vm", name), record.encrypted, act,
                            detail=f"to {target.m.home} datastore {datastore}")

    def delete_vm(self, name: str, *, destroy_key: bool = False) -> None:
        """Remove the VM from the inventory and its directory from the datastore.

        The VM's KEK stays at its provider unless ``destroy_key``: backups of the VM
        remain restorable only while it exists. Destroying it needs Cryptographer.ManageKeys.
        """
        record, vm = self._vm(name)

        def act() -> None:
            self._require_off(record)
            with lock_vm(vm, "delete"):
                shutil.rmtree(vm.directory)
            self.inventory.remove_vm(name)
            if destroy_key and record.provider_id and record.key_id:
                self.m.keys.registry.get(record.provider_id).destroy_key(record.key_id)
        operation = Operation.DELETE_WITH_KEY if destroy_key else Operation.DELETE
        self.checked(operation, ("vm", name), record.encrypted, act)

    def clone(self, name: str, new_name: str, *, exact: bool = False) -> VmRecord:
        """A new VM in the same datastore; new identity unless ``exact`` (which needs Cryptographer.Clone)."""
        record, vm = self._vm(name)

        def act() -> VmRecord:
            self._require_off(record)
            if any(r.name == new_name for r in self.inventory.vms()):
                raise InventoryError(f"a VM named '{new_name}' is already in the inventory")
            target = self.inventory.datastore_path(record.datastore) / new_name
            clone = clone_vm(vm, target, new_name, self.m.keys, self.m.ca, exact=exact)
            return self.register_created(clone.vmx_path, record.datastore)
        operation = Operation.CLONE_EXACT if exact else Operation.CLONE
        return self.checked(operation, ("vm", name), record.encrypted, act, detail=new_name)

    def snapshot(self, name: str) -> Snapshot:
        record, vm = self._vm(name)

        def act() -> Snapshot:
            self._require_off(record)
            return take_snapshot(vm, str(self.m.home))
        return self.checked(Operation.SNAPSHOT, ("vm", name), record.encrypted, act)

    def revert(self, name: str, number: int | None = None) -> Snapshot:
        record, vm = self._vm(name)

        def act() -> Snapshot:
            self._require_off(record)
            return revert_snapshot(vm, self.m.keys, str(self.m.home), number)
        return self.checked(Operation.REVERT, ("vm", name), record.encrypted, act)

    # ------------------------------------------------------------------ administration

    def add_datastore(self, name: str, path: str | os.PathLike[str]) -> None:
        self.checked(Operation.ADD_DATASTORE, ROOT, False, lambda: self.inventory.add_datastore(name, path))

    def add_user(self, name: str, password: str) -> None:
        self.checked(Operation.MANAGE_USERS, ROOT, False, lambda: self.inventory.add_user(name, password), detail=name)

    def grant(self, entity: tuple[str, str], principal: str, role: str, *, group: bool = False) -> None:
        self.checked(Operation.MANAGE_USERS, ROOT, False,
                  lambda: self.inventory.grant(entity, principal, role, group=group),
                  detail=f"{role} for {principal} on {entity[0]} {entity[1]}".strip())

    # ------------------------------------------------------------------ encryption and the vTPM

    def add_vtpm(self, name: str) -> VmRecord:
        record, vm = self._vm(name)

        def act() -> VmRecord:
            self._require_off(record)
            add_vtpm(vm, self.m.keys, self.m.ca)
            return self._refresh(name)
        return self.checked(Operation.ADD_VTPM, ("vm", name), record.encrypted, act)

    def remove_vtpm(self, name: str) -> VmRecord:
        record, vm = self._vm(name)

        def act() -> VmRecord:
            self._require_off(record)
            if not record.vtpm:
                raise VmError("the VM has no vTPM", vm.vmx_path)
            with lock_vm(vm, "remove the vTPM"):
                with VmNvramStore.open(vm.vmx_path, home=str(self.m.home)) as store:
                    store.load()
                    store.save(None)
                set_vtpm_present(vm, self.m.keys, False)
            return self._refresh(name)
        return self.checked(Operation.REMOVE_VTPM, ("vm", name), record.encrypted, act)

    def encrypt(self, name: str) -> VmRecord:
        record, vm = self._vm(name)

        def act() -> VmRecord:
            self._require_off(record)
            encrypt_vm(vm, self.m.keys)
            return self._refresh(name)
        return self.checked(Operation.ENCRYPT, ("vm", name), record.encrypted, act)

    def decrypt(self, name: str) -> VmRecord:
        record, vm = self._vm(name)

        def act() -> VmRecord:
            self._require_off(record)
            if record.vtpm:
                raise VmError("a VM with a vTPM stays encrypted: remove the vTPM first", vm.vmx_path)
            decrypt_vm(vm, self.m.keys)
            return self._refresh(name)
        return self.checked(Operation.DECRYPT, ("vm", name), record.encrypted, act)

    def rekey(self, name: str) -> VmRecord:
        record, vm = self._vm(name)

        def act() -> VmRecord:
            rekey_vm(vm, self.m.keys)
            return self._refresh(name)
        return self.checked(Operation.REKEY, ("vm", name), record.encrypted, act)

    # ------------------------------------------------------------------ power

    def power_on(self, name: str, *, accept_rollback: bool = False) -> VmRecord:
        """Serve the VM's vTPM. A rolled-back .nvram (older than the generation the inventory or the key
        provider recorded) is refused, unless ``accept_rollback``: then it is accepted as the latest, audited."""
        record, vm = self._vm(name)
        accepted = ""

        def act() -> VmRecord:
            nonlocal accepted
            if record.power_state == "on":
                raise VmError("the VM is already powered on", vm.vmx_path)
            if record.power_state == "suspended":
                raise VmError("the VM is suspended: resume it (or discard its .vmss with power off)", vm.vmx_path)
            pid = port = None
            generation = record.nvram_generation
            if record.vtpm:
                accepted, generation = self._check_rollback(record, vm, accept_rollback)
                pid, port = self._serve_vtpm(vm)
            updated = VmRecord(**{**record.__dict__, "power_state": "on", "vtpm_pid": pid, "vtpm_port": port,
                                  "nvram_generation": generation})
            self.inventory.put_vm(updated)
            return updated
        operation = Operation.POWER_ON_ACCEPT_ROLLBACK if accept_rollback else Operation.POWER_ON
        return self.checked(operation, ("vm", name), record.encrypted, act, detail=lambda: accepted)

    def accept_rollback(self, name: str) -> int | None:
        """Take the powered-off VM's .nvram as it is now as its latest state (audited); return its generation."""
        record, vm = self._vm(name)
        accepted = ""

        def act() -> int | None:
            nonlocal accepted
            self._require_off(record)
            accepted, generation = self._check_rollback(record, vm, True)
            self.inventory.put_vm(VmRecord(**{**record.__dict__, "nvram_generation": generation}))
            return generation
        return self.checked(Operation.POWER_ON_ACCEPT_ROLLBACK, ("vm", name), record.encrypted, act,
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

    def _serve_vtpm(self, vm: VmHome) -> tuple[int, int]:
        """The VM's vTPM on the swtpm protocol, as its own process (like the VMX process would)."""
        run_dir = self.m.home / "run"
        run_dir.mkdir(mode=0o700, exist_ok=True)
        log = run_dir / f"{vm.name}.vtpm.log"
        port = free_port_pair()
        env = {name: os.environ[name] for name in CHILD_ENVIRONMENT if name in os.environ}
        env["VMCRYPT_HOME"] = str(self.m.home)
        with open(log, "wb") as handle:
            process = subprocess.Popen(
                vtpm_command.command_line("serve", "--vm", str(vm.vmx_path), "--port", str(port)),
                stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env=env,
            )
        deadline = time.monotonic() + POWER_ON_TIMEOUT
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if "serving on" in text:
                return process.pid, port
            if process.poll() is not None:
                last = text.strip().splitlines()[-1] if text.strip() else "no output"
                raise VmError(f"the vTPM did not start: {last.removeprefix('error: vtpm serve: ')}", vm.vmx_path)
            time.sleep(0.05)
        process.kill()
        raise VmError("the vTPM did not start in time", vm.vmx_path)

    def suspend(self, name: str) -> VmRecord:
        """Save the vTPM's state (Shutdown(STATE)) into the encrypted .vmss and stop it."""
        record, vm = self._vm(name)

        def act() -> VmRecord:
            if record.power_state != "on":
                raise VmError("only a powered-on VM can be suspended", vm.vmx_path)
            started = save_tpm_state(record.vtpm_port) if record.vtpm_port else False
            if record.vtpm_pid:
                _stop(record.vtpm_pid)
            write_suspend_state(vm, str(self.m.home), started)
            updated = VmRecord(**{**record.__dict__, "power_state": "suspended", "vtpm_pid": None, "vtpm_port": None})
            self.inventory.put_vm(updated)
            return updated
        return self.checked(Operation.SUSPEND, ("vm", name), record.encrypted, act)

    def resume(self, name: str) -> VmRecord:
        """Power on from the .vmss: the vTPM comes back with Startup(STATE), its PCRs as they were."""
        record, vm = self._vm(name)

        def act() -> VmRecord:
            if record.power_state != "suspended":
                raise VmError("the VM is not suspended", vm.vmx_path)
            if record.vtpm:
                self._check_rollback(record, vm, False)
            body = read_suspend_state(vm, self.m.keys)
            restore_tpm_state(vm, str(self.m.home), body)
            unlist_home_file(vm, self.m.keys, suspend_file(vm))  # before the vTPM holds the VM's lock
            pid = port = None
            if record.vtpm:
                pid, port = self._serve_vtpm(vm)
                if body.get("tpm_started"):
                    try:
                        resume_tpm_state(port, vm.vmx_path)
                    except VmError:
                        _stop(pid)
                        raise
            suspend_file(vm).path.unlink()
            updated = VmRecord(**{**record.__dict__, "power_state": "on", "vtpm_pid": pid, "vtpm_port": port})
            self.inventory.put_vm(updated)
            return updated
        return self.checked(Operation.POWER_ON, ("vm", name), record.encrypted, act, detail="resume")

    def power_off(self, name: str) -> VmRecord:
        record, vm = self._vm(name)

        def act() -> VmRecord:
            if record.power_state == "off":
                raise VmError("the VM is already powered off", vm.vmx_path)
            if record.vtpm_pid:
                _stop(record.vtpm_pid)
            if record.power_state == "suspended":  # discards the suspended state: the next power on is cold
                discard_suspend_state(vm, self.m.keys)
            seen = _describe_on_disk(vm.vmx_path, record.datastore, record)  # the generation the vTPM left
            updated = VmRecord(**{**record.__dict__, "power_state": "off", "vtpm_pid": None, "vtpm_port": None,
                                  "nvram_generation": seen.nvram_generation})
            self.inventory.put_vm(updated)
            return updated
        return self.checked(Operation.POWER_OFF, ("vm", name), record.encrypted, act)

    # ------------------------------------------------------------------ console and files

    def open_console(self, name: str) -> str:
        record, _ = self._vm(name)
        return self.checked(Operation.CONSOLE, ("vm", name), record.encrypted,
                         lambda: self.inventory.issue_console_ticket(name, self.user, CONSOLE_TICKET_LIFETIME))

    def browse(self, name: str) -> list[str]:
        record, vm = self._vm(name)
        return self.checked(Operation.BROWSE, ("vm", name), record.encrypted,
                         lambda: sorted(p.name for p in vm.directory.iterdir() if p.is_file() and not p.name.startswith(".")))

    def download(self, name: str, filename: str) -> bytes:
        record, vm = self._vm(name)

        def act() -> bytes:
            path = (vm.directory / filename).resolve()
            if path.parent != vm.directory.resolve() or not path.is_file():
                raise VmError(f"no file '{filename}' in the VM's directory", vm.directory)
            return path.read_bytes()
        return self.checked(Operation.DOWNLOAD, ("vm", name), record.encrypted, act, detail=filename)


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:  # not our child (another process powered it on): poll for its end
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
