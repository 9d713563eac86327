"""The `--user` side of the command line: inventory commands and privilege-checked VM operations.

With ``--user U`` (password from ``$VMCRYPT_PASSWORD`` or a prompt) a command runs
as that inventory user: its privileges are checked and the outcome is audited.
Without ``--user`` the path-based commands work directly on files, as a local
administrator would; the inventory-only commands refuse to run.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from vmcrypt.backup import backup_vm, verify_backup
from vmcrypt.cli_common import emit, key_manager
from vmcrypt.errors import VmcryptError
from vmcrypt.home import resolve_home
from vmcrypt.gate import datastore_target, vm_target
from vmcrypt.management import Management, UserSession
from vmcrypt.progress import FileProgress
from vmcrypt.rbac import Operation
from vmcrypt.vm import VmHome
from vmcrypt.vm_vtpm import accept_nvram_rollback

PASSWORD_ENV = "VMCRYPT_PASSWORD"
NEW_PASSWORD_ENV = "VMCRYPT_NEW_PASSWORD"
TO_PASSWORD_ENV = "VMCRYPT_TO_PASSWORD"
T = TypeVar("T")


class NeedsUser(VmcryptError):
    pass


def _password(env: str, prompt: str) -> str:
    value = os.environ.get(env)
    if value:
        return value
    if not sys.stdin.isatty():
        raise VmcryptError(f"no password: set ${env} or run on a terminal")
    return getpass.getpass(prompt)


def management(args: argparse.Namespace, *, create: bool = False) -> Management:
    """The management home's inventory; only `inventory init` may create one (and only where there is none)."""
    return Management(resolve_home(args.home), create_inventory=create)


def session(args: argparse.Namespace, required: bool = True) -> UserSession | None:
    if not args.user:
        if required:
            raise NeedsUser("this command acts on the inventory: give --user NAME")
        return None
    return management(args).login(args.user, _password(PASSWORD_ENV, f"Password for {args.user}: "))


def guarded_vm(args: argparse.Namespace, operation: Operation, path: str, action: Callable[[], T]) -> T:
    """Run a path-based VM command, through the inventory's privilege check when --user is given."""
    user = session(args, required=False)
    if user is None:
        return action()
    record = user.vm_at(path)
    return user.run(operation, vm_target(record.name, record.encrypted), action)


def guarded_create(args: argparse.Namespace, path: str, action: Callable[[], Any]) -> Any:
    user = session(args, required=False)
    if user is None:
        return action()
    datastore = user.datastore_of(Path(path).parent)

    def create_and_register() -> Any:
        home = action()
        user.register_created(home.vmx_path, datastore)
        return home
    return user.run(Operation.CREATE_VM, datastore_target(datastore), create_and_register)


def _vm_row(record: Any) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k != "vtpm_pid"}


# ----------------------------------------------------------------------------- commands


def cmd_init(args: argparse.Namespace) -> None:
    m = management(args, create=True)
    m.bootstrap(args.admin, _password(PASSWORD_ENV, f"New password for {args.admin}: "))
    emit(args, {"admin": args.admin, "inventory": str(m.inventory.path)},
         f"inventory {m.inventory.path} created; {args.admin} is Administrator")


def cmd_user_add(args: argparse.Namespace) -> None:
    session(args).add_user(args.name, _password(NEW_PASSWORD_ENV, f"New password for {args.name}: "), args.role)
    emit(args, {"user": args.name, "role": args.role}, f"added user {args.name}" + (f" as {args.role}" if args.role else ""))


def cmd_datastore_add(args: argparse.Namespace) -> None:
    session(args).add_datastore(args.name, args.path)
    emit(args, {"datastore": args.name, "path": str(Path(args.path).resolve())}, f"added datastore {args.name}")


def cmd_audit(args: argparse.Namespace) -> None:
    entries = session(args).audit_log()
    emit(args, [e.__dict__ for e in entries],
         "\n".join(f"{e.at}  {e.user:12} {e.outcome:7} {e.action} {e.entity}  {e.detail}" for e in entries))


def cmd_vm_register(args: argparse.Namespace) -> None:
    record = session(args).register_vm(args.path, args.datastore)
    emit(args, _vm_row(record), f"registered {record.name} ({'encrypted' if record.encrypted else 'not encrypted'})")


def cmd_vm_unregister(args: argparse.Namespace) -> None:
    session(args).unregister_vm(args.name)
    emit(args, {"unregistered": args.name}, f"unregistered {args.name} (its files stay on the datastore)")


def cmd_vm_list(args: argparse.Namespace) -> None:
    rows = [_vm_row(r) for r in session(args).vms()]
    emit(args, rows, "\n".join(
        f"{r['name']:16} {r['power_state']:3}  {'encrypted' if r['encrypted'] else 'clear    '}  "
        f"{'vTPM' if r['vtpm'] else '    '}  {r['vmx_path']}" for r in rows) or "no VMs")


def cmd_power_on(args: argparse.Namespace) -> None:
    record = session(args).power_on(args.name, accept_rollback=args.accept_rollback)
    tcti = f"swtpm:host=127.0.0.1,port={record.vtpm_port}" if record.vtpm_port else None
    emit(args, _vm_row(record), f"{record.name} powered on" + (f"; vTPM at TPM2TOOLS_TCTI={tcti}" if tcti else ""))


def cmd_power_off(args: argparse.Namespace) -> None:
    record = session(args).power_off(args.name)
    emit(args, _vm_row(record), f"{record.name} powered off")


def cmd_suspend(args: argparse.Namespace) -> None:
    record = session(args).suspend(args.name)
    emit(args, _vm_row(record), f"{record.name} suspended (vTPM state in {record.name}.vmss)")


def cmd_resume(args: argparse.Namespace) -> None:
    record = session(args).resume(args.name)
    tcti = f"swtpm:host=127.0.0.1,port={record.vtpm_port}" if record.vtpm_port else None
    emit(args, _vm_row(record), f"{record.name} resumed" + (f"; vTPM at TPM2TOOLS_TCTI={tcti}" if tcti else ""))


def cmd_console(args: argparse.Namespace) -> None:
    ticket = session(args).open_console(args.name)
    emit(args, {"vm": args.name, "ticket": ticket}, f"console ticket for {args.name}: {ticket}")


def cmd_browse(args: argparse.Namespace) -> None:
    files = session(args).browse(args.name)
    emit(args, files, "\n".join(files))


def cmd_download(args: argparse.Namespace) -> None:
    data = session(args).download(args.name, args.file)
    out = Path(args.out or args.file)
    out.write_bytes(data)
    emit(args, {"vm": args.name, "file": args.file, "bytes": len(data), "out": str(out)},
         f"downloaded {args.file} ({len(data)} bytes) to {out}")


def cmd_snapshot(args: argparse.Namespace) -> None:
    snap = session(args).snapshot(args.name)
    emit(args, {"vm": args.name, "snapshot": snap.number, "file": str(snap.path)},
         f"snapshot {snap.number} of {args.name} in {snap.path.name}")


def cmd_revert(args: argparse.Namespace) -> None:
    snap = session(args).revert(args.name, args.number)
    emit(args, {"vm": args.name, "snapshot": snap.number}, f"{args.name} reverted to snapshot {snap.number}")


def cmd_clone(args: argparse.Namespace) -> None:
    record = session(args).clone(args.name, args.new_name, exact=args.exact)
    identity = "the same vTPM" if args.exact else "a new identity"
    emit(args, _vm_row(record), f"cloned {args.name} to {record.name} with {identity}")


def cmd_migrate(args: argparse.Namespace) -> None:
    if args.to_home:
        source = session(args)
        target_user = args.to_user or args.user
        password = os.environ.get(TO_PASSWORD_ENV) or _password(PASSWORD_ENV, f"Password for {target_user} at {args.to_home}: ")
        target = Management(args.to_home, create_inventory=False).login(target_user, password)
        record = source.migrate_to_home(args.name, target, args.datastore)
        emit(args, _vm_row(record), f"{record.name} migrated to {args.to_home} datastore {record.datastore}")
        return
    record = session(args).migrate(args.name, args.datastore)
    emit(args, _vm_row(record), f"{record.name} migrated to {record.datastore} ({record.vmx_path})")


def cmd_host_add(args: argparse.Namespace) -> None:
    session(args).add_host(args.name)
    emit(args, {"host": args.name}, f"added host {args.name}")


def cmd_delete(args: argparse.Namespace) -> None:
    session(args).delete_vm(args.name, destroy_key=args.destroy_key)
    gone = "inventory, files and key" if args.destroy_key else "inventory and files; its key stays for backups"
    emit(args, {"deleted": args.name, "key_destroyed": args.destroy_key}, f"deleted {args.name} ({gone})")


def _manifest_row(manifest: Any) -> dict[str, Any]:
    return {**manifest.__dict__, "files": [e.__dict__ for e in manifest.files]}


def cmd_backup(args: argparse.Namespace) -> None:
    """`backup VM DEST` (VM: inventory name with --user, else a path) or `backup verify DEST`."""
    if args.vm == "verify":
        manifest = verify_backup(args.destination)
        emit(args, _manifest_row(manifest), f"{args.destination}: complete and intact "
             f"({len(manifest.files)} files of VM {manifest.vm}, vTPM: {'yes' if manifest.vtpm else 'no'})")
        return
    progress = FileProgress()
    try:
        user = session(args, required=False)
        if user is None:
            manifest = backup_vm(VmHome(args.vm), key_manager(args), args.destination, include_disks=not args.no_disks,
                                 progress=progress)
        else:
            manifest = user.backup(args.vm, args.destination, include_disks=not args.no_disks, progress=progress)
    finally:
        progress.close()
    total = sum(e.size for e in manifest.files)
    emit(args, _manifest_row(manifest), f"backed up {manifest.vm}: {len(manifest.files)} files, {total} bytes "
         f"-> {args.destination}")


def cmd_restore(args: argparse.Namespace) -> None:
    record = session(args).restore(args.archive, args.datastore)
    emit(args, _vm_row(record), f"restored {record.name} into {record.datastore} and registered it")


def cmd_vtpm_accept_rollback(args: argparse.Namespace) -> None:
    """Accept the VM's .nvram as it is now as its latest state (after a deliberate restore of an older copy)."""
    user = session(args, required=False)
    if user is None:
        generation = accept_nvram_rollback(args.path, args.home)
    else:
        generation = user.accept_rollback(user.vm_at(args.path).name)
    emit(args, {"vm": args.path, "nvram_generation": generation},
         f"accepted the .nvram of {args.path} as it is (generation {generation})")


def cmd_vtpm_remove(args: argparse.Namespace) -> None:
    record = session(args).remove_vtpm(args.name)
    emit(args, _vm_row(record), f"removed the vTPM of {record.name}")


def register(commands: Any, vm_commands: Any, vtpm_commands: Any, command: Callable[..., Any]) -> None:
    inv = commands.add_parser("inventory", help="users, datastores and the audit log (needs --user)",
                              description="The management inventory: users, roles, datastores, audit log.")
    inv_commands = inv.add_subparsers(dest="inventory_command", metavar="COMMAND", required=True)
    init = command(inv_commands, "init", cmd_init, f"create the inventory and its first Administrator (password: ${PASSWORD_ENV})")
    init.add_argument("--admin", required=True, help="name of the first administrator")
    user_add = command(inv_commands, "user-add", cmd_user_add, f"add a user (password: ${NEW_PASSWORD_ENV})")
    user_add.add_argument("name")
    user_add.add_argument("--role", help="grant this role on the whole inventory (e.g. 'No Cryptography Administrator')")
    ds = command(inv_commands, "datastore-add", cmd_datastore_add, "add a datastore (a directory)")
    ds.add_argument("name")
    ds.add_argument("path")
    command(inv_commands, "audit", cmd_audit, "show the audit log, denials included")
    command(inv_commands, "host-add", cmd_host_add, "add a host").add_argument("name")

    backup = command(commands, "backup", cmd_backup, "back up a VM into one archive, or `backup verify ARCHIVE`")
    backup.add_argument("vm", metavar="VM|verify", help="inventory name (with --user) or the VM's path; or 'verify'")
    backup.add_argument("destination", metavar="ARCHIVE", help="the archive to write (or to verify)")
    backup.add_argument("--no-disks", action="store_true", help="leave the virtual disks out")
    restore = command(commands, "restore", cmd_restore, "check an archive and its key, then restore and register the VM")
    restore.add_argument("archive")
    restore.add_argument("--datastore", required=True)

    reg = command(vm_commands, "register", cmd_vm_register, "add an existing VM to the inventory")
    reg.add_argument("path", help="the VM's .vmx file or directory")
    reg.add_argument("--datastore", required=True)
    for name, func, text in (("unregister", cmd_vm_unregister, "remove a VM from the inventory (files stay)"),
                             ("power-off", cmd_power_off, "power off (stops the vTPM; its state is already on disk)"),
                             ("suspend", cmd_suspend, "suspend: the vTPM's saved state goes into the encrypted .vmss"),
                             ("resume", cmd_resume, "resume a suspended VM: the vTPM continues with its PCRs"),
                             ("console", cmd_console, "open the console: prints a one-time console ticket"),
                             ("browse", cmd_browse, "list the VM's files on its datastore"),
                             ("snapshot", cmd_snapshot, "snapshot the VM's vTPM and EFI state into an encrypted .vmsn")):
        command(vm_commands, name, func, text).add_argument("name", help="the VM's inventory name")
    power_on = command(vm_commands, "power-on", cmd_power_on, "power on (serves the VM's vTPM on the swtpm protocol)")
    power_on.add_argument("name", help="the VM's inventory name")
    power_on.add_argument("--accept-rollback", action="store_true",
                          help="accept a .nvram older than the last one saved (a deliberate restore); audited")
    delete = command(vm_commands, "delete", cmd_delete, "delete the VM: inventory entry and files")
    delete.add_argument("name", help="the VM's inventory name")
    delete.add_argument("--destroy-key", action="store_true",
                        help="also destroy its KEK at the key provider (its backups become unrestorable)")
    revert = command(vm_commands, "revert", cmd_revert, "revert to a snapshot (the latest by default)")
    revert.add_argument("name", help="the VM's inventory name")
    revert.add_argument("--number", type=int, help="snapshot number")
    clone = command(vm_commands, "clone", cmd_clone, "clone a powered-off VM (new vTPM and keys unless --exact)")
    clone.add_argument("name", help="the VM's inventory name")
    clone.add_argument("new_name", help="name of the clone (same datastore)")
    clone.add_argument("--exact", action="store_true", help="copy the vTPM as it is (needs Cryptographer.Clone)")
    migrate = command(vm_commands, "migrate", cmd_migrate, "cold-migrate a powered-off VM to another datastore")
    migrate.add_argument("name", help="the VM's inventory name")
    migrate.add_argument("--datastore", required=True, help="target datastore")
    migrate.add_argument("--to-home", help="another management home (installation) sharing the key provider")
    migrate.add_argument("--to-user", help=f"user in that home (default: the same name; password: ${TO_PASSWORD_ENV})")
    command(vm_commands, "list", cmd_vm_list, "VMs you may see, with power and encryption state")
    down = command(vm_commands, "download", cmd_download, "download a file of the VM from its datastore")
    down.add_argument("name", help="the VM's inventory name")
    down.add_argument("file", help="file name inside the VM's directory")
    down.add_argument("--out", help="where to write it (default: the file name)")
    remove = command(vtpm_commands, "remove", cmd_vtpm_remove, "remove a VM's vTPM (its keys and NV data are gone)")
    remove.add_argument("name", help="the VM's inventory name")
    accept = command(vtpm_commands, "accept-rollback", cmd_vtpm_accept_rollback,
                     "accept a VM's .nvram that is older than the last one saved (a deliberate restore)")
    accept.add_argument("path", help="the VM's .vmx file or directory")
