"""The `--user` side of the command line: the inventory and the VM lifecycle, through the management service.

With ``--user U`` (password from ``$VMCRYPT_PASSWORD`` or a prompt) a command is
sent to the management service, which checks U's privileges, audits the
outcome and acts; the command line never touches the home's files then.
Without ``--user`` the path-based commands (backup, vtpm accept-rollback) work
directly on files as the local administrator (root on the management host);
the inventory-only commands refuse to run.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from vmcrypt.backup import backup_vm, restore_vm, verify_backup
from vmcrypt.cli_common import PASSWORD_ENV, emit, key_manager, password, remote, remote_vm
from vmcrypt.errors import VmcryptError
from vmcrypt.home import resolve_home
from vmcrypt import inventory_db
from vmcrypt.inventory_db import DB_FILE
from vmcrypt.inventory_move import move_to, target_url
from vmcrypt.management import Management
from vmcrypt.password_policy import MIN_LENGTH, check_new_password
from vmcrypt.progress import FileProgress
from vmcrypt.rbac import Operation
from vmcrypt.results import manifest_row
from vmcrypt.service_client import ServiceClient
from vmcrypt.vm import VmHome
from vmcrypt.vm_vtpm import accept_nvram_rollback

NEW_PASSWORD_ENV = "VMCRYPT_NEW_PASSWORD"
TO_PASSWORD_ENV = "VMCRYPT_TO_PASSWORD"


class NeedsUser(VmcryptError):
    """An inventory command run without ``--user``: only the management service serves the inventory."""


def service(args: argparse.Namespace) -> ServiceClient:
    """The logged-in management service; these commands act on the inventory, which only the service serves."""
    client = remote(args)
    if client is None:
        raise NeedsUser("this command acts on the inventory: give --user NAME")
    return client


def _vm(args: argparse.Namespace) -> str:
    return f"/vms/{quote(args.name, safe='')}"


def _vm_text(verb: str) -> Callable[[dict[str, Any]], str]:
    return lambda r: f"{r['name']} {verb}"


def _tcti(record: dict[str, Any]) -> str:
    return f"; vTPM at TPM2TOOLS_TCTI=swtpm:host=127.0.0.1,port={record['vtpm_port']}" if record["vtpm_port"] else ""


# ----------------------------------------------------------------------------- commands


def cmd_init(args: argparse.Namespace) -> None:
    """`inventory init --admin NAME [--db-url URL]` (local administrator): create the inventory and its first
    Administrator. A new inventory's password is checked before anything is created; ``--db-url`` is recorded for the
    home, which keeps one inventory (a PostgreSQL one is refused next to its SQLite file or another recorded URL)."""
    home = resolve_home(args.home)
    database = inventory_db.resolve(home, args.db_url)
    if args.db_url and database.dialect != "sqlite":
        _check_db_url_for(home, database)
    new_password = password(PASSWORD_ENV, f"New password for {args.admin}: ")
    if database.sqlite_path is None or not database.sqlite_path.exists():
        check_new_password(args.admin, new_password)  # before the inventory is created: nothing half-made
    m = Management(home, create_inventory=True, db_url=args.db_url)
    if m.inventory.users():  # the more useful refusal first
        m.bootstrap(args.admin, new_password)
    check_new_password(args.admin, new_password)
    m.bootstrap(args.admin, new_password)
    if args.db_url:
        inventory_db.record(home, database)  # the service and later commands of this home find it there
    emit(args, {"admin": args.admin, "inventory": m.inventory.where},
         f"inventory {m.inventory.where} created; {args.admin} is Administrator")


def cmd_move_to(args: argparse.Namespace) -> None:
    """`inventory move-to --db-url URL` (local administrator): move the home's SQLite inventory to an empty PostgreSQL
    database; prints each table's row count and digest and where the SQLite file is kept."""
    result = move_to(resolve_home(args.home), args.db_url)
    emit(args, {"inventory": result.target, "kept": str(result.kept),
                "tables": {t.name: {"rows": t.rows, "sha256": t.digest} for t in result.tables}},
         "\n".join([f"inventory moved to {result.target}; the SQLite file is kept as {result.kept}"]
                   + [f"  {t.name:16} {t.rows:8} rows  sha256 {t.digest[:16]}" for t in result.tables]))


def _check_move_to(args: argparse.Namespace) -> str | None:
    """A URL that cannot name a PostgreSQL inventory is a usage error (exit 2)."""
    try:
        target_url(args.db_url)
    except VmcryptError as exc:
        return f"--db-url: {exc}"
    return None


def _check_db_url_for(home: Path, database: inventory_db.Database) -> None:
    """A home keeps one inventory: not a PostgreSQL one next to its SQLite file, nor a second URL."""
    if (home / DB_FILE).exists():
        raise VmcryptError(f"this home already has an SQLite inventory ({home / DB_FILE}): it keeps that one")
    recorded = home / inventory_db.URL_FILE
    if recorded.is_file():
        known = inventory_db.parse_url(recorded.read_text())
        if inventory_db.without_password(known) != inventory_db.without_password(database.url):
            raise VmcryptError(f"this home's inventory is at {known.render_as_string(hide_password=True)} "
                               f"({recorded}), not at {database.shown}")


def cmd_user_add(args: argparse.Namespace) -> None:
    """`inventory user-add NAME [--role ROLE]`: add a user; the new password (``$VMCRYPT_NEW_PASSWORD`` or a prompt) is
    checked here before it is sent."""
    client = service(args)
    new_password = password(NEW_PASSWORD_ENV, f"New password for {args.name}: ")
    check_new_password(args.name, new_password)
    data = client.request("POST", "/users", json={"name": args.name, "password": new_password, "role": args.role})
    emit(args, data, f"added user {args.name}" + (f" as {args.role}" if args.role else ""))


def cmd_users(args: argparse.Namespace) -> None:
    """`inventory users`: each user and their groups."""
    rows = service(args).request("GET", "/users")
    emit(args, rows, "\n".join(f"{r['user']:16} {', '.join(r['groups'])}".rstrip() for r in rows))


def cmd_roles(args: argparse.Namespace) -> None:
    """`inventory roles`: each role, built-in or custom, with its number of privileges."""
    rows = service(args).request("GET", "/roles")
    emit(args, rows, "\n".join(f"{r['role']:32} {'built-in' if r['builtin'] else 'custom  '}  "
                               f"{len(r['privileges'])} privileges" for r in rows))


def cmd_role_add(args: argparse.Namespace) -> None:
    """`inventory role-add NAME [--privilege P ...]`: add a custom role."""
    data = service(args).request("POST", "/roles", json={"name": args.name, "privileges": args.privilege or []})
    emit(args, data, f"added role {args.name} ({len(args.privilege or [])} privileges)")


def cmd_grant(args: argparse.Namespace) -> None:
    """`inventory grant PRINCIPAL ROLE [--entity TYPE:NAME] [--group]`: give a user or group a role on an object (the
    root by default)."""
    kind, _, name = args.entity.partition(":")
    data = service(args).request("POST", "/permissions", json={
        "entity_type": kind, "entity": name, "principal": args.principal, "role": args.role, "group": args.group})
    emit(args, data, f"granted {args.role} to {args.principal} on {args.entity}")


def cmd_datastore_add(args: argparse.Namespace) -> None:
    """`inventory datastore-add NAME PATH`: add a datastore; the path is made absolute here, since the service has its
    own working directory."""
    data = service(args).request("POST", "/datastores", json={"name": args.name, "path": os.path.abspath(args.path)})
    emit(args, data, f"added datastore {args.name}")


def cmd_datastores(args: argparse.Namespace) -> None:
    """`inventory datastores`: each datastore and its directory."""
    rows = service(args).request("GET", "/datastores")
    emit(args, rows, "\n".join(f"{r['datastore']:16} {r['path']}" for r in rows) or "no datastores")


def cmd_host_add(args: argparse.Namespace) -> None:
    """`inventory host-add NAME`: add a host."""
    data = service(args).request("POST", "/hosts", json={"name": args.name})
    emit(args, data, f"added host {args.name}")


def cmd_hosts(args: argparse.Namespace) -> None:
    """`inventory hosts`: the hosts' names."""
    rows = service(args).request("GET", "/hosts")
    emit(args, rows, "\n".join(rows) or "no hosts")


def _attestation_text(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        when = r["attested_at"] or "never attested"
        lines.append(f"{r['host']:16} {r['status']:12} {r['version'] or '-':12} {when}")
        lines += [f"{'':16} - {reason}" for reason in r["reasons"]]
    return "\n".join(lines) or "no hosts"


def cmd_host_attest(args: argparse.Namespace) -> None:
    """`inventory host-attest [NAME ...]`: attest the hosts now (every host by default) and show each outcome with its
    reasons."""
    rows = service(args).request("POST", "/hosts/attest", json={"hosts": args.names})
    emit(args, rows, _attestation_text(rows))


def cmd_host_attestation_trust(args: argparse.Namespace) -> None:
    """`inventory host-attestation-trust [--manufacturer-ca PEM ...] [--image MANIFEST ...]`: replace what host
    attestation trusts with the files' contents."""
    cas = [Path(path).read_text() for path in args.manufacturer_ca or []]
    images = [Path(path).read_text() for path in args.image or []]
    data = service(args).request("POST", "/hosts/attestation/settings", json={"manufacturer_cas": cas, "images": images})
    emit(args, data, "host attestation trusts TPM manufacturer CAs: " + ("; ".join(data["manufacturer_cas"]) or "none")
         + "\nimages: " + (", ".join(data["images"]) or "not compared (Secure Boot and VIB signatures only)"))


def cmd_host_attestation(args: argparse.Namespace) -> None:
    """`inventory host-attestation`: each host's last attestation, with every reason it failed."""
    rows = service(args).request("GET", "/hosts/attestation")
    emit(args, rows, _attestation_text(rows))


def cmd_security_report(args: argparse.Namespace) -> None:
    """`inventory security-report`: the hosts' attestation and the key providers' health."""
    report = service(args).request("GET", "/security-report", params={"format": "json"})
    providers = "\n".join(f"{p['name']:16} {p['kind']:8} {p['health']:10} {p['reason']}".rstrip()
                           for p in report["key_providers"]) or "no key providers"
    emit(args, report, f"security report of {report['generated_at']}\n\nhosts:\n"
         f"{_attestation_text(report['hosts'])}\n\nkey providers:\n{providers}")


def cmd_audit(args: argparse.Namespace) -> None:
    """`inventory audit`: the management audit log, denials included."""
    entries = service(args).request("GET", "/audit")
    emit(args, entries, "\n".join(f"{e['at']}  {e['user']:12} {e['outcome']:7} {e['action']} {e['entity']}  "
                                  f"{e['detail']}" for e in entries))


def cmd_vm_register(args: argparse.Namespace) -> None:
    """`vm register PATH --datastore DS`: add an existing VM to the inventory."""
    record = service(args).request("POST", "/vms/register", json={"path": os.path.abspath(args.path),
                                                                   "datastore": args.datastore})
    emit(args, record, f"registered {record['name']} ({'encrypted' if record['encrypted'] else 'not encrypted'})")


def cmd_vm_unregister(args: argparse.Namespace) -> None:
    """`vm unregister NAME`: remove a VM from the inventory; its files stay on the datastore."""
    data = service(args).request("POST", f"{_vm(args)}/unregister")
    emit(args, data, f"unregistered {args.name} (its files stay on the datastore)")


def cmd_vm_list(args: argparse.Namespace) -> None:
    """`vm list`: the VMs the user may see, with power state, encryption and vTPM."""
    rows = service(args).request("GET", "/vms")
    emit(args, rows, "\n".join(
        f"{r['name']:16} {r['power_state']:3}  {'encrypted' if r['encrypted'] else 'clear    '}  "
        f"{'vTPM' if r['vtpm'] else '    '}  {r['vmx_path']}" for r in rows) or "no VMs")


def cmd_power_on(args: argparse.Namespace) -> None:
    """`vm power-on NAME [--accept-rollback] [--port P] [--data-unix] [--host H]`: power on and print where the VM's
    vTPM is served."""
    action = "power-on-accepting-rollback" if args.accept_rollback else "power-on"
    endpoints = {"port": args.port, "data_unix": args.data_unix, "host": args.host}
    record = service(args).request("POST", f"{_vm(args)}/{action}", json=endpoints)
    unix = f"; data socket {record['vtpm_data_unix']}" if record.get("vtpm_data_unix") else ""
    emit(args, record, f"{record['name']} powered on{_tcti(record)}{unix}")


def cmd_power_off(args: argparse.Namespace) -> None:
    """`vm power-off NAME`: power off (the vTPM stops)."""
    record = service(args).request("POST", f"{_vm(args)}/power-off")
    emit(args, record, f"{record['name']} powered off")


def cmd_suspend(args: argparse.Namespace) -> None:
    """`vm suspend NAME`: suspend; the vTPM's state goes into the encrypted .vmss."""
    record = service(args).request("POST", f"{_vm(args)}/suspend")
    emit(args, record, f"{record['name']} suspended (vTPM state in {record['name']}.vmss)")


def cmd_resume(args: argparse.Namespace) -> None:
    """`vm resume NAME`: resume a suspended VM and print where its vTPM is served."""
    record = service(args).request("POST", f"{_vm(args)}/resume")
    emit(args, record, f"{record['name']} resumed{_tcti(record)}")


def cmd_console(args: argparse.Namespace) -> None:
    """`vm console NAME`: print a one-time console ticket."""
    data = service(args).request("POST", f"{_vm(args)}/console")
    emit(args, data, f"console ticket for {args.name}: {data['ticket']}")


def cmd_browse(args: argparse.Namespace) -> None:
    """`vm browse NAME`: the VM's files on its datastore."""
    files = service(args).request("GET", f"{_vm(args)}/files")
    emit(args, files, "\n".join(files))


def cmd_download(args: argparse.Namespace) -> None:
    """`vm download NAME FILE [--out PATH]`: write one of the VM's files here (to FILE by default)."""
    data = service(args).request("GET", f"{_vm(args)}/files/{quote(args.file, safe='')}")
    out = Path(args.out or args.file)
    out.write_bytes(data)
    emit(args, {"vm": args.name, "file": args.file, "bytes": len(data), "out": str(out)},
         f"downloaded {args.file} ({len(data)} bytes) to {out}")


def cmd_snapshot(args: argparse.Namespace) -> None:
    """`vm snapshot NAME`: snapshot the VM's vTPM and EFI state into an encrypted .vmsn."""
    data = service(args).request("POST", f"{_vm(args)}/snapshot")
    emit(args, data, f"snapshot {data['snapshot']} of {args.name} in {Path(data['file']).name}")


def cmd_revert(args: argparse.Namespace) -> None:
    """`vm revert NAME [--number N]`: revert to a snapshot (the latest by default)."""
    data = service(args).request("POST", f"{_vm(args)}/revert", json={"number": args.number})
    emit(args, data, f"{args.name} reverted to snapshot {data['snapshot']}")


def cmd_clone(args: argparse.Namespace) -> None:
    """`vm clone NAME NEW_NAME [--exact] [--host H]`: clone a powered-off VM, with a new identity unless ``--exact``."""
    record = service(args).request("POST", f"{_vm(args)}/{'clone-exact' if args.exact else 'clone'}",
                                   json={"new_name": args.new_name, "host": args.host})
    identity = "the same vTPM" if args.exact else "a new identity"
    emit(args, record, f"cloned {args.name} to {record['name']} with {identity}")


def cmd_migrate(args: argparse.Namespace) -> None:
    """`vm migrate NAME --datastore DS [--host H]`: cold-migrate to another datastore; with ``--to-home`` to a datastore
    of another home, logging in there as ``--to-user`` (password: ``$VMCRYPT_TO_PASSWORD``, else as for ``--user``)."""
    client = service(args)
    if args.to_home:
        target_user = args.to_user or args.user
        target_password = os.environ.get(TO_PASSWORD_ENV) or password(
            PASSWORD_ENV, f"Password for {target_user} at {args.to_home}: ")
        record = client.request("POST", f"{_vm(args)}/migrate-away", json={
            "datastore": args.datastore, "to_home": os.path.abspath(args.to_home), "to_user": target_user,
            "to_password": target_password})
        emit(args, record, f"{record['name']} migrated to {args.to_home} datastore {record['datastore']}")
        return
    record = client.request("POST", f"{_vm(args)}/migrate", json={"datastore": args.datastore, "host": args.host})
    emit(args, record, f"{record['name']} migrated to {record['datastore']} ({record['vmx_path']})")


def cmd_delete(args: argparse.Namespace) -> None:
    """`vm delete NAME [--destroy-key]`: delete the VM's inventory entry and files; its key stays for backups unless
    ``--destroy-key``."""
    client = service(args)
    data = client.request("POST", f"{_vm(args)}/delete-with-key") if args.destroy_key else client.request(
        "DELETE", _vm(args))
    gone = "inventory, files and key" if args.destroy_key else "inventory and files; its key stays for backups"
    emit(args, data, f"deleted {args.name} ({gone})")


def cmd_backup(args: argparse.Namespace) -> None:
    """`backup VM DEST` (VM: inventory name with --user, else a path) or `backup verify DEST`."""
    if args.vm == "verify":
        manifest = verify_backup(args.destination)
        emit(args, manifest_row(manifest), f"{args.destination}: complete and intact "
             f"({len(manifest.files)} files of VM {manifest.vm}, vTPM: {'yes' if manifest.vtpm else 'no'})")
        return
    client = remote(args)
    if client:
        headers = client.download("POST", f"/vms/{quote(args.vm, safe='')}/backup", Path(args.destination),
                                  json={"no_disks": args.no_disks})
        data = json.loads(base64.b64decode(headers["X-Vmcrypt-Manifest"]))
        total = data.pop("bytes")
    else:
        progress = FileProgress()
        try:
            data = manifest_row(backup_vm(VmHome(args.vm), key_manager(args), args.destination,
                                          include_disks=not args.no_disks, progress=progress))
        finally:
            progress.close()
        total = sum(e["size"] for e in data["files"])
    emit(args, data, f"backed up {data['vm']}: {len(data['files'])} files, {total} bytes -> {args.destination}")


def cmd_restore(args: argparse.Namespace) -> None:
    """`restore ARCHIVE --datastore DS` with --user (into the inventory), else `restore ARCHIVE --to DIR`."""
    client = remote(args)
    if client is None:
        vm = restore_vm(args.archive, args.to, key_manager(args))
        emit(args, {"name": vm.name, "vmx": str(vm.vmx_path)}, f"restored {vm.name} into {vm.vmx_path.parent}")
        return
    with open(args.archive, "rb") as archive:
        record = client.request("POST", "/restore", params={"datastore": args.datastore}, content=archive)
    emit(args, record, f"restored {record['name']} into {record['datastore']} and registered it")


def check_restore(args: argparse.Namespace) -> str | None:
    """The usage error of `restore`, if any: where to restore depends on --user, as for `backup`."""
    if args.user and not args.datastore:
        return "restore with --user needs --datastore NAME (the VM is registered in the inventory)"
    if not args.user and not args.to:
        return "restore without --user needs --to DIR (files only; give --user to restore into the inventory)"
    if args.user and args.to:
        return "--to is for a restore without --user; with --user give --datastore"
    return None


def cmd_vtpm_accept_rollback(args: argparse.Namespace) -> None:
    """Accept the VM's .nvram as it is now as its latest state (after a deliberate restore of an older copy)."""
    client = remote(args)
    if client:
        generation = client.request("POST", f"/vms/{remote_vm(client, args.path)}/accept-rollback")["nvram_generation"]
    else:
        generation = accept_nvram_rollback(args.path, args.home)
    emit(args, {"vm": args.path, "nvram_generation": generation},
         f"accepted the .nvram of {args.path} as it is (generation {generation})")


def cmd_vtpm_remove(args: argparse.Namespace) -> None:
    """`vtpm remove NAME`: remove the VM's vTPM (its keys and NV data are gone)."""
    record = service(args).request("DELETE", f"{_vm(args)}/vtpm")
    emit(args, record, f"removed the vTPM of {record['name']}")


def register(commands: Any, vm_commands: Any, vtpm_commands: Any, command: Callable[..., Any]) -> None:
    """The inventory, backup/restore, and the --user VM and vTPM subcommands, each with its operation."""
    O = Operation  # noqa: N806
    inv = commands.add_parser("inventory", help="users, roles, datastores, hosts and the audit log (needs --user)",
                              description="The management inventory: users, roles, datastores, audit log.")
    inv_commands = inv.add_subparsers(dest="inventory_command", metavar="COMMAND", required=True)
    init = command(inv_commands, "init", cmd_init,
                   f"create the inventory and its first Administrator (password: ${PASSWORD_ENV}, at least {MIN_LENGTH} "
                   "characters, not containing the name; local administrator)")
    init.add_argument("--admin", required=True, help="name of the first administrator")
    init.add_argument("--db-url", metavar="URL", help="keep the inventory in this database instead of HOME/inventory.db: "
                      "postgresql+psycopg://USER[:PASSWORD]@HOST:PORT/DB (recorded in HOME/inventory.url, the password "
                      f"apart in HOME/inventory.password, 0600; or ${inventory_db.ENV_DB_URL})")
    move = command(inv_commands, "move-to", cmd_move_to,
                   "move this home's SQLite inventory to an empty PostgreSQL database (local administrator; the "
                   "management services of the home must be stopped): every table copied, the audit log in order, "
                   "row counts and digests compared; the URL is recorded for the home and the SQLite file kept as "
                   "inventory.db.moved-TIMESTAMP (0600). Exit 1 when refused, nothing changed")
    move.add_argument("--db-url", metavar="URL", required=True,
                      help="the empty target database: postgresql+psycopg://USER[:PASSWORD]@HOST:PORT/DB (the "
                      "password, if given, is kept apart in HOME/inventory.password, 0600)")
    move.set_defaults(check=_check_move_to)
    user_add = command(inv_commands, "user-add", cmd_user_add, f"add a user (password: ${NEW_PASSWORD_ENV}, at least {MIN_LENGTH} characters, "
                       "not containing the name)",
                       operation=O.MANAGE_USERS)
    user_add.add_argument("name", help="the new user's name")
    user_add.add_argument("--role", help="grant this role on the whole inventory (e.g. 'No Cryptography Administrator')")
    command(inv_commands, "users", cmd_users, "list the users and their groups", operation=O.LIST_USERS)
    command(inv_commands, "roles", cmd_roles, "list the roles", operation=O.LIST_ROLES)
    role_add = command(inv_commands, "role-add", cmd_role_add, "add a custom role", operation=O.ADD_ROLE)
    role_add.add_argument("name", help="the new role's name")
    role_add.add_argument("--privilege", action="append", metavar="NAME", help="a privilege (repeat), e.g. System.View")
    grant = command(inv_commands, "grant", cmd_grant, "give a user (or --group) a role on an object", operation=O.GRANT)
    grant.add_argument("principal", help="user (or, with --group, group) name")
    grant.add_argument("role", help="role name, e.g. Administrator")
    grant.add_argument("--entity", default="root:", help="root:, datastore:NAME or vm:NAME (default: the root)")
    grant.add_argument("--group", action="store_true", help="the principal is a group")
    ds = command(inv_commands, "datastore-add", cmd_datastore_add, "add a datastore (a directory)",
                 operation=O.ADD_DATASTORE)
    ds.add_argument("name", help="the datastore's name")
    ds.add_argument("path", help="its directory")
    command(inv_commands, "datastores", cmd_datastores, "list the datastores", operation=O.LIST_DATASTORES)
    command(inv_commands, "audit", cmd_audit, "show the audit log, denials included", operation=O.READ_AUDIT)
    command(inv_commands, "host-add", cmd_host_add, "add a host", operation=O.ADD_HOST).add_argument(
        "name", help="the host's name")
    command(inv_commands, "hosts", cmd_hosts, "list the hosts", operation=O.LIST_HOSTS)
    attest = command(inv_commands, "host-attest", cmd_host_attest,
                     "ask hosts for a fresh TPM quote and event log and verify them (vSphere 6.7: a failure is an "
                     "alarm in the audit log, nothing is blocked); exit 0 when the attestation ran, whatever it found",
                     operation=O.ATTEST_HOSTS)
    attest.add_argument("names", nargs="*", metavar="NAME", help="hosts to attest (default: every host)")
    command(inv_commands, "host-attestation", cmd_host_attestation,
            "show each host's last attestation: Passed, Failed (every reason), N/A (no TPM 2.0), when, version",
            operation=O.HOST_ATTESTATION)
    trust = command(inv_commands, "host-attestation-trust", cmd_host_attestation_trust,
                    "set what host attestation trusts (replaces the settings): TPM manufacturer CAs and, optionally, "
                    "image manifests", operation=O.CONFIGURE_HOST_ATTESTATION)
    trust.add_argument("--manufacturer-ca", action="append", metavar="PEM",
                       help="a TPM manufacturer CA certificate a host's EK must chain to (repeat)")
    trust.add_argument("--image", action="append", metavar="MANIFEST",
                       help="a trusted image manifest (JSON, repeat); without any, images are not compared")
    command(inv_commands, "security-report", cmd_security_report,
            "the security report (hosts' attestation, key providers' health) as text or --json; in a browser: "
            "https://HOST:PORT/security-report", operation=O.SECURITY_REPORT)

    backup = command(commands, "backup", cmd_backup, "back up a VM into one archive, or `backup verify ARCHIVE`; "
                     "with --user the VM is an inventory name, else a path read as the local administrator "
                     "(as `restore` writes a directory without --user)",
                     operation=O.BACKUP)
    backup.add_argument("vm", metavar="VM|verify", help="inventory name (with --user) or the VM's path; or 'verify'")
    backup.add_argument("destination", metavar="ARCHIVE", help="the archive to write (or to verify)")
    backup.add_argument("--no-disks", action="store_true", help="leave the virtual disks out")
    restore = command(commands, "restore", cmd_restore, "check an archive and its key, then restore the VM: with --user "
                      "into a datastore of the inventory (registered), else into a directory (--to) as the local "
                      "administrator, as `backup` reads a path without --user", operation=O.RESTORE)
    restore.set_defaults(check=check_restore)
    restore.add_argument("archive", help="the backup archive (from `vmcrypt backup`)")
    restore.add_argument("--datastore", help="with --user: the datastore to restore into")
    restore.add_argument("--to", metavar="DIR", help="without --user: the VM directory to create (absent or empty)")

    reg = command(vm_commands, "register", cmd_vm_register, "add an existing VM to the inventory", operation=O.REGISTER)
    reg.add_argument("path", help="the VM's .vmx file or directory")
    reg.add_argument("--datastore", required=True, help="the datastore that holds it")
    for name, func, text, operation in (
            ("unregister", cmd_vm_unregister, "remove a VM from the inventory (files stay)", O.UNREGISTER),
            ("power-off", cmd_power_off, "power off (stops the vTPM; its state is already on disk)", O.POWER_OFF),
            ("suspend", cmd_suspend, "suspend: the vTPM's saved state goes into the encrypted .vmss", O.SUSPEND),
            ("resume", cmd_resume, "resume a suspended VM: the vTPM continues with its PCRs", O.RESUME),
            ("console", cmd_console, "open the console: prints a one-time console ticket", O.CONSOLE),
            ("browse", cmd_browse, "list the VM's files on its datastore", O.BROWSE),
            ("snapshot", cmd_snapshot, "snapshot the VM's vTPM and EFI state into an encrypted .vmsn", O.SNAPSHOT)):
        command(vm_commands, name, func, text, operation=operation).add_argument("name", help="the VM's inventory name")
    power_on = command(vm_commands, "power-on", cmd_power_on, "power on (serves the VM's vTPM on the swtpm protocol)",
                       operation=O.POWER_ON)
    power_on.add_argument("name", help="the VM's inventory name")
    power_on.add_argument("--accept-rollback", action="store_true",
                          help="accept a .nvram older than the last one saved (a deliberate restore); audited")
    power_on.add_argument("--port", type=int, metavar="PORT",
                          help="the vTPM's TCP data port (control on PORT+1; default: a free pair)")
    power_on.add_argument("--data-unix", action="store_true",
                          help="also serve the vTPM's data channel on a Unix socket (its path is printed)")
    power_on.add_argument("--host", help="the destination host (a VM on a trusted key provider: only a host attested by its Trust Authority)")
    delete = command(vm_commands, "delete", cmd_delete, "delete the VM: inventory entry and files", operation=O.DELETE)
    delete.add_argument("name", help="the VM's inventory name")
    delete.add_argument("--destroy-key", action="store_true",
                        help="also destroy its KEK at the key provider (its backups become unrestorable)")
    revert = command(vm_commands, "revert", cmd_revert, "revert to a snapshot (the latest by default)",
                     operation=O.REVERT)
    revert.add_argument("name", help="the VM's inventory name")
    revert.add_argument("--number", type=int, help="snapshot number")
    clone = command(vm_commands, "clone", cmd_clone, "clone a powered-off VM (new vTPM and keys unless --exact)",
                    operation=O.CLONE)
    clone.add_argument("name", help="the VM's inventory name")
    clone.add_argument("new_name", help="name of the clone (same datastore)")
    clone.add_argument("--exact", action="store_true", help="copy the vTPM as it is (needs Cryptographer.Clone)")
    clone.add_argument("--host", help="the destination host (a VM on a trusted key provider: only a host attested by its Trust Authority)")
    migrate = command(vm_commands, "migrate", cmd_migrate, "cold-migrate a powered-off VM to another datastore",
                      operation=O.MIGRATE)
    migrate.add_argument("name", help="the VM's inventory name")
    migrate.add_argument("--datastore", required=True, help="target datastore")
    migrate.add_argument("--host", help="the destination host (a VM on a trusted key provider: only a host attested by its Trust Authority)")
    migrate.add_argument("--to-home", help="another management home (installation) sharing the key provider")
    migrate.add_argument("--to-user", help=f"user in that home (default: the same name; password: ${TO_PASSWORD_ENV})")
    command(vm_commands, "list", cmd_vm_list, "VMs you may see, with power and encryption state", operation=O.LIST_VMS)
    down = command(vm_commands, "download", cmd_download, "download a file of the VM from its datastore",
                   operation=O.DOWNLOAD)
    down.add_argument("name", help="the VM's inventory name")
    down.add_argument("file", help="file name inside the VM's directory")
    down.add_argument("--out", help="where to write it (default: the file name)")
    remove = command(vtpm_commands, "remove", cmd_vtpm_remove, "remove a VM's vTPM (its keys and NV data are gone)",
                     operation=O.REMOVE_VTPM)
    remove.add_argument("name", help="the VM's inventory name")
    accept = command(vtpm_commands, "accept-rollback", cmd_vtpm_accept_rollback,
                     "accept a VM's .nvram that is older than the last one saved (a deliberate restore)",
                     operation=O.ACCEPT_ROLLBACK)
    accept.add_argument("path", help="the VM's .vmx file or directory")
