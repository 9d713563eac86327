"""`vmcrypt`: create, encrypt, decrypt, rekey and describe VMs; manage key providers.

Results go to stdout (``--json`` for scripts), diagnostics to stderr as
``error: <what failed>: <why>``. Exit status: 0 success, 1 refused or
failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from certs.ca import CaError, CertificateAuthority
from durable.atomic import write_atomic
from vmcrypt import xts
from vmcrypt.admin_operations import (
    ek_rows,
    import_ca,
    import_signed_ca,
    key_rows,
    native_provider,
    pem,
    probe_provider,
    provider_row,
    provider_rows,
    reissue_eks,
    revoke,
    root_pem,
    verify_eks,
)
from vmcrypt.ca_keys import open_ca
from vmcrypt.cli_common import (
    MASTER_PASSPHRASE_ENV,
    SERVER_ENV,
    __version__,
    add_json_option,
    connect,
    emit,
    key_manager,
    print_error,
    one_line,
    quiet_broken_pipe,
    remote,
    remote_vm,
    size_argument,
)
from vmcrypt.cli_host import register as register_host_commands
from vmcrypt.cli_inventory import register as register_inventory_commands
from vmcrypt.cli_trust import register as register_trust_commands
from vmcrypt.errors import VmcryptError
from vmcrypt.home import resolve_home
from vmcrypt.keys import KeyManager
from vmcrypt.passphrase import obtain_passphrase
from vmcrypt.progress import FileProgress
from vmcrypt.rbac import Operation
from vmcrypt.results import created_row, operation_row, operation_text
from vmcrypt.service import serve
from vmcrypt.vm import VmHome, VmSpec, create_vm
from vmcrypt.vm_encryption import OperationResult, decrypt_vm, describe_vm, encrypt_vm, rekey_vm
from vmcrypt.vm_vtpm import fold_leftover_journal
from vmcrypt.vtpm_provision import add_vtpm

BACKUP_PASSPHRASE_ENV = "VMCRYPT_BACKUP_PASSPHRASE"


class CommandFailed(Exception):
    """Raised inside a command to exit 1 with a message."""


# ----------------------------------------------------------------------------- commands
#
# Each command gets its result as plain data, from the management service when --user is given
# (remote(args)), else by acting on the files as the local administrator; then prints it.


def cmd_vm_create(args: argparse.Namespace) -> None:
    """`vm create PATH`: lay out a new unencrypted VM (its .vmx and home files, a flat disk with --disk); with
    --user the service creates it (PATH directly in a datastore's directory) and registers it in the inventory.
    Prints the VM's name, its directory and its files; --json: ``{vm, vmx, files}``."""
    path = Path(args.path)
    spec = VmSpec(name=args.name or path.name, hw_version=args.hw_version, firmware=args.firmware,
                  memory_mb=args.memory, cpus=args.cpus, disk_bytes=args.disk or 0)
    client = remote(args)
    if client:
        data = client.request("POST", "/vms", json={
            "path": os.path.abspath(path), "vm_name": spec.name, "hw_version": spec.hw_version,
            "firmware": spec.firmware, "memory": spec.memory_mb, "cpus": spec.cpus, "disk_bytes": spec.disk_bytes})
    else:
        data = created_row(create_vm(path, spec))
    emit(args, data, f"created VM {data['vm']} in {Path(data['vmx']).parent}\n"
         + "\n".join(f"  {f}" for f in data["files"]))


def _run_vm_operation(args: argparse.Namespace, verb: str, operation: Operation, action: Callable[..., OperationResult],
                      **kwargs: Any) -> None:
    client = remote(args)
    if client:
        body = {"provider": kwargs.get("provider"), "disks": kwargs.get("include_disks", False),
                "deep": kwargs.get("deep", False)}
        data = client.request("POST", f"/vms/{remote_vm(client, args.path)}/{operation.name.lower()}", json=body)
    else:
        home = VmHome(args.path)
        progress = FileProgress()
        try:
            keys = key_manager(args)
            fold_leftover_journal(home, keys)  # what a killed vTPM journaled, before the .nvram is rewritten
            data = operation_row(action(home, keys, progress=progress, **kwargs), home)
        finally:
            progress.close()
    emit(args, data, operation_text(data, verb))


def cmd_encrypt(args: argparse.Namespace) -> None:
    """`encrypt PATH`: encrypt the VM's home files (and its disks with --disks) under a new DEK wrapped by a new KEK
    of --provider (default: the default provider); an interrupted encryption is resumed. Prints the files changed
    and the key; --json: the operation row (operation, vm, resumed, changed, changed_kinds, key_provider_id,
    key_id)."""
    _run_vm_operation(args, "encrypted", Operation.ENCRYPT, encrypt_vm, provider=args.provider, include_disks=args.disks)


def cmd_decrypt(args: argparse.Namespace) -> None:
    """`decrypt PATH`: decrypt every encrypted file of the VM (an interrupted run is rolled back first). Prints the
    files changed; --json: the operation row, as for `encrypt`."""
    _run_vm_operation(args, "decrypted", Operation.DECRYPT, decrypt_vm)


def cmd_rekey(args: argparse.Namespace) -> None:
    """`rekey PATH`: a new KEK wrapping the same DEK (shallow), or with --deep a new DEK and every file re-encrypted;
    --provider moves the VM to that provider. Prints which rekey ran and the files changed; --json: the operation
    row, as for `encrypt`."""
    verb = "deep-rekeyed (new DEK and KEK)" if args.deep else "shallow-rekeyed (new KEK)"
    _run_vm_operation(args, verb, Operation.REKEY, rekey_vm, deep=args.deep, provider=args.provider)


def cmd_describe(args: argparse.Namespace) -> None:
    """`describe PATH`: whether and how the VM is encrypted (cipher, key provider, key id, DEK wrap, where the .vmx
    secrets are), an interrupted operation, and each file's state; needs no key material. Prints a table;
    --json: the whole description, each file's container header fields included."""
    client = remote(args)
    if client:
        info = client.request("GET", f"/vms/{remote_vm(client, args.path)}")
    else:
        info = describe_vm(VmHome(args.path), key_manager(args))
    lines = [f"VM            {info['vm']}", f"configuration {info['vmx']}"]
    if info["encrypted"]:
        provider = info["key_provider"]
        lines += [
            "encrypted     yes",
            f"cipher        {info['cipher']}",
            f"key provider  {provider['name'] or '(not configured here)'} ({provider['id']})"
            + (f", kind {provider['kind']}" if provider.get("kind") else ""),
            f"key id        {info['key_id']}",
            f"DEK wrap      {info['dek_wrap']}",
            f".vmx secrets  {'in encryption.data' if info['vmx_sensitive_data_encrypted'] else 'in clear'}",
        ]
    else:
        lines.append("encrypted     no")
    if info["interrupted_operation"]:
        op = info["interrupted_operation"]
        lines.append(f"interrupted   {op['operation']} started {op['started']} (run it again, or decrypt)")
    lines.append("files:")
    for entry in info["files"]:
        state = "encrypted" if entry["encrypted"] else "clear"
        if entry.get("error"):
            state += f" ({entry['error']})"
        lines.append(f"  {entry['path']:28} {entry['kind']:16} {state}")
    emit(args, info, "\n".join(lines))


def cmd_provider_list(args: argparse.Namespace) -> None:
    """`provider list`: the configured key providers, one line each (``*`` marks the default: name, kind, id);
    --json: rows of ``{id, name, kind, default}``. The embedded default provider is created on first use."""
    client = remote(args)
    rows = client.request("GET", "/providers") if client else provider_rows(key_manager(args))
    text = "\n".join(f"{'*' if r['default'] else ' '} {r['name']:16} {r['kind']:8} {r['id']}" for r in rows)
    emit(args, rows, text)


def cmd_provider_keys(args: argparse.Namespace) -> None:
    """`provider keys [PROVIDER]`: the keys of a provider (default: the default provider), one line each with id,
    creation time and state, or ``no keys``; --json: rows of ``{key_id, created, state}``. Never key material."""
    client = remote(args)
    if client:
        rows = client.request("GET", "/providers/keys", params={"provider": args.provider} if args.provider else None)
    else:
        rows = key_rows(key_manager(args).provider(args.provider))
    text = "\n".join(f"{r['key_id']}  {r['created']}  {r['state']}" for r in rows) or "no keys"
    emit(args, rows, text)


def cmd_provider_add_native(args: argparse.Namespace) -> None:
    """`provider add-native NAME`: add a native key provider with a key store of its own; it becomes the default
    with --default or when there is none yet. Prints its name and id; --json: ``{id, name, kind}``."""
    client = remote(args)
    if client:
        data = client.request("POST", "/providers/native", json={"name": args.name, "default": args.default})
    else:
        data = provider_row(key_manager(args).registry.add_native(args.name, make_default=args.default))
    emit(args, data, f"added native key provider {data['name']} ({data['id']})")


def cmd_provider_add_kmip(args: argparse.Namespace) -> None:
    """`provider add-kmip NAME --server ... --ca --cert --key`: add a KMIP key server cluster reached over mutual
    TLS, its servers tried in order (--id reuses another home's provider id). Prints its name, id and servers;
    --json: ``{id, name, kind, servers}``."""
    client = remote(args)
    if client:
        data = client.request("POST", "/providers/kmip", json={
            "name": args.name, "servers": args.server, "ca": _b64_file(args.ca), "cert": _b64_file(args.cert),
            "key": _b64_file(args.key), "timeout": args.timeout, "cache_seconds": args.cache_seconds,
            "default": args.default, "id": args.id})
    else:
        provider = key_manager(args).registry.add_kmip(
            args.name, args.server, args.ca, args.cert, args.key,
            timeout=args.timeout, cache_seconds=args.cache_seconds, make_default=args.default, provider_id=args.id)
        data = {**provider_row(provider), "servers": args.server}
    emit(args, data, f"added KMIP key provider {data['name']} ({data['id']}): {', '.join(data['servers'])}")


def cmd_provider_test(args: argparse.Namespace) -> None:
    """Create, fetch and destroy a probe key: proves the provider works end to end."""
    client = remote(args)
    if client:
        data = client.request("POST", f"/providers/{quote(args.name, safe='')}/test")
    else:
        data = probe_provider(key_manager(args).registry.get(args.name))
    where = f" via {data['server']}" if data["server"] else ""
    trips = data["round_trips"]
    per_trip = f", {data['ms_per_round_trip']} ms per round trip ({trips})" if trips else ""
    emit(args, data, f"key provider {data['name']} works{where}: create, get, destroy in "
         f"{data['elapsed_ms']:.1f} ms{per_trip}")


def cmd_provider_set_default(args: argparse.Namespace) -> None:
    """`provider set-default NAME`: make a provider (name or id) the one new encryptions use. Prints the new
    default; --json: ``{id, name, kind}``."""
    client = remote(args)
    if client:
        data = client.request("POST", f"/providers/{quote(args.name, safe='')}/default")
    else:
        data = provider_row(key_manager(args).registry.set_default(args.name))
    emit(args, data, f"default key provider is now {data['name']} ({data['id']})")


def cmd_provider_export(args: argparse.Namespace) -> None:
    """`provider export FILE`: write a backup of a native key store, encrypted under the backup passphrase
    (--passphrase-file or $VMCRYPT_BACKUP_PASSPHRASE or a prompt), to FILE. Prints how many keys of which
    provider; --json: ``{file, keys}``."""
    passphrase = obtain_passphrase(args.passphrase_file, BACKUP_PASSPHRASE_ENV, "Backup passphrase: ")
    client = remote(args)
    if client:
        blob = client.request("POST", "/providers/export", json={"passphrase": passphrase.decode(),
                                                                  "provider": args.provider})
        write_atomic(args.file, blob, mode=0o600)
        count, name = int(client.last_headers["X-Vmcrypt-Keys"]), client.last_headers["X-Vmcrypt-Provider"]
    else:
        provider = native_provider(key_manager(args), args.provider)
        count, name = provider.export_backup(args.file, passphrase), provider.name
    emit(args, {"file": args.file, "keys": count}, f"exported {count} keys of {name} to {args.file}")


def cmd_provider_import(args: argparse.Namespace) -> None:
    """`provider import FILE`: merge the keys of a native key store backup into a native provider, keeping the
    keys it has. Prints how many keys were new; --json: ``{file, added}``."""
    passphrase = obtain_passphrase(args.passphrase_file, BACKUP_PASSPHRASE_ENV, "Backup passphrase: ")
    client = remote(args)
    if client:
        data = client.request("POST", "/providers/import", json={
            "backup": _b64_file(args.file), "passphrase": passphrase.decode(), "provider": args.provider})
    else:
        provider = native_provider(key_manager(args), args.provider)
        data = {"added": provider.import_backup(args.file, passphrase), "provider": provider.name}
    emit(args, {"file": args.file, "added": data["added"]}, f"imported {data['added']} new keys into {data['provider']}")


def _b64_file(path: str | None) -> str | None:
    return base64.b64encode(Path(path).read_bytes()).decode() if path else None


def _ca(args: argparse.Namespace) -> tuple[CertificateAuthority, KeyManager]:
    keys = key_manager(args)
    return open_ca(keys.registry.home, keys), keys


def cmd_vtpm_add(args: argparse.Namespace) -> None:
    """`vtpm add PATH`: give the VM a vTPM (EFI firmware and hardware version 14 or later), encrypting the VM
    and putting EK certificates from the management home's CA into its NV. Prints each EK's NV index and serial;
    --json: ``{vm, eks}``, a row per EK (ek, nv_index, serial, issuer)."""
    client = remote(args)
    if client:
        data = client.request("POST", f"/vms/{remote_vm(client, args.path)}/vtpm")
    else:
        ca, keys = _ca(args)
        vm = VmHome(args.path)
        data = {"vm": vm.name, "eks": ek_rows(add_vtpm(vm, keys, ca))}
    emit(args, data, f"added a vTPM to {data['vm']} (VM encrypted)\n" + "\n".join(
        f"  EK {r['ek']:9} certificate in NV {r['nv_index']} (serial {r['serial']})" for r in data["eks"]))


def cmd_ca_show(args: argparse.Namespace) -> None:
    """`ca show`: the issuing CA's public facts (subject, issuer, serial, expiry, key, chain, fingerprint,
    certificates issued and revoked), one ``name value`` line each; --json: the same as an object."""
    client = remote(args)
    info = client.request("GET", "/ca") if client else _ca(args)[0].describe()
    emit(args, info, "\n".join(f"{k:20} {v}" for k, v in info.items()))


def _write_or_print(data: bytes, out: str | None) -> None:
    """PEM (certificates, a CSR, the CRL) to ``out`` atomically, or to stdout."""
    if not out:
        sys.stdout.write(data.decode())
    elif Path(out).exists() and not Path(out).is_file():  # a device or a pipe: nothing to replace
        Path(out).write_bytes(data)
    else:
        write_atomic(out, data, mode=None if Path(out).exists() else 0o644)


def cmd_ca_export_root(args: argparse.Namespace) -> None:
    """`ca export-root`: the root certificate (with --chain the whole chain, issuing certificate first) as PEM,
    on stdout or written to --out. No --json."""
    client = remote(args)
    if client:
        data = client.request("GET", "/ca/root", params={"chain": "1"} if args.chain else None)
    else:
        data = root_pem(_ca(args)[0], args.chain)
    _write_or_print(data, args.out)


def cmd_ca_verify_ek(args: argparse.Namespace) -> None:
    """`ca verify-ek PATH`: check each EK certificate in the VM's vTPM against its EK and this CA's chain and CRL.
    Prints ``OK`` or ``INVALID: reason`` per EK; --json: ``{vm, certificates}``. Exits 1 (CommandFailed) after
    printing when any certificate does not validate."""
    client = remote(args)
    if client:
        data = client.request("POST", "/ca/verify-ek", json={"vm": remote_vm(client, args.path)})
    else:
        ca, keys = _ca(args)
        vm = VmHome(args.path)
        data = {"vm": vm.name, "certificates": verify_eks(ca, keys, vm)}
    rows = data["certificates"]
    text = "\n".join(f"{r['ek']:9} {r['nv_index']}  {'OK' if r['valid'] else 'INVALID: ' + r['reason']}" for r in rows)
    emit(args, data, text)
    if not all(r["valid"] for r in rows):
        raise CommandFailed("an EK certificate did not validate against the CA")


def cmd_ca_reissue_ek(args: argparse.Namespace) -> None:
    """`ca reissue-ek PATH... | --all`: new certificates from the current CA for the same EKs, of the VMs named or
    (--all) every VM this CA certified, skipping with a reason a VM that fails under --all. Prints a line per
    certificate and per skipped VM; --json: ``{reissued, skipped}``."""
    client = remote(args)
    if client:
        data = client.request("POST", "/ca/reissue-ek", json={
            "vms": [remote_vm(client, path) for path in args.paths], "all": args.all})
    else:
        ca, keys = _ca(args)
        data = reissue_eks(ca, keys, args.paths, args.all)
    lines = [f"{r['vm']}: EK {r['ek']} reissued by {r['issuer']} (serial {r['serial']})" for r in data["reissued"]]
    lines += [f"{s['vm']}: skipped ({s['reason']})" for s in data["skipped"]]
    emit(args, data, "\n".join(lines) or "no VM holds a certificate from this CA")


def _ca_now(args: argparse.Namespace, info: dict[str, Any]) -> None:
    emit(args, info, f"the CA is now {info['subject']} (chain: {' <- '.join(info['chain'])})")


def cmd_ca_import(args: argparse.Namespace) -> None:
    """`ca import --cert [--key] [--password-file]`: replace the CA by a third-party one (a PEM chain and key, or a
    PKCS#12 file). Prints the new CA's subject and chain; --json: the CA's description, as `ca show`."""
    client = remote(args)
    if client:
        info = client.request("POST", "/ca/import", json={
            "cert": _b64_file(args.cert), "key": _b64_file(args.key), "password": _b64_file(args.password_file)})
    else:
        password = Path(args.password_file).read_bytes().rstrip(b"\r\n") if args.password_file else None
        key = Path(args.key).read_bytes() if args.key else None
        info = import_ca(_ca(args)[0], Path(args.cert).read_bytes(), key, password)
    _ca_now(args, info)


def cmd_ca_csr(args: argparse.Namespace) -> None:
    """`ca csr --cn NAME`: a CSR for a subordinate CA for an outside CA to sign (finished by `ca import-signed`),
    as PEM on stdout or written to --out. No --json."""
    client = remote(args)
    data = client.request("POST", "/ca/csr", json={"cn": args.cn}) if client else _ca(args)[0].create_csr(args.cn)
    _write_or_print(data, args.out)


def cmd_ca_import_signed(args: argparse.Namespace) -> None:
    """`ca import-signed --chain FILE`: install the certificate an outside CA signed for the pending CSR, and its
    chain. Prints the new CA's subject and chain; --json: the CA's description, as `ca show`."""
    client = remote(args)
    if client:
        info = client.request("POST", "/ca/import-signed", json={"chain": _b64_file(args.chain)})
    else:
        info = import_signed_ca(_ca(args)[0], Path(args.chain).read_bytes())
    _ca_now(args, info)


def cmd_ca_revoke(args: argparse.Namespace) -> None:
    """`ca revoke SERIAL`: revoke a certificate this CA issued (hexadecimal serial). Prints ``revoked SERIAL``;
    --json: ``{revoked}``."""
    client = remote(args)
    data = client.request("POST", "/ca/revoke", json={"serial": args.serial}) if client else revoke(_ca(args)[0], args.serial)
    emit(args, data, f"revoked {data['revoked']}")


def cmd_ca_crl(args: argparse.Namespace) -> None:
    """`ca crl`: the CA's current CRL as PEM, on stdout or written to --out. No --json."""
    client = remote(args)
    _write_or_print(client.request("GET", "/ca/crl") if client else pem(_ca(args)[0].crl()), args.out)


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The `vmcrypt` argument parser: the global options, then every command (those of cli_inventory, cli_trust
    and cli_host included); each command sets ``func``, its management-plane ``operation`` and whether it prints
    JSON."""
    parser = argparse.ArgumentParser(
        prog="vmcrypt",
        description="Encrypt VM home files and disks with AES-XTS-256 under keys from a key provider.",
        epilog="Management home: --home, else $VMCRYPT_HOME, else ~/.local/share/vmcrypt.",
    )
    parser.add_argument("--home", help="management home directory (key providers, key store)")
    parser.add_argument(
        "--master-passphrase-file",
        help=f"file holding the native key store passphrase (or set ${MASTER_PASSPHRASE_ENV})",
    )
    parser.add_argument("--user", help="act as this inventory user through the management service: privileges "
                        "checked, outcome audited (password: $VMCRYPT_PASSWORD or a prompt)")
    parser.add_argument("--server", dest="service_url", metavar="URL", help=f"the management service: unix:PATH or https://HOST:PORT (or ${SERVER_ENV}; "
                        "default: the socket of --home)")
    parser.add_argument("--ca", dest="service_ca", metavar="FILE", help="the service CA's certificate for an https:// service (default: HOME/service-ca.pem)")
    parser.add_argument("--version", action="version", version=f"vmcrypt {__version__} (XTS backend: {xts.BACKEND})")
    add_json_option(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(parent: Any, name: str, func: Callable[[argparse.Namespace], None], help: str, json_out: bool = True,
                operation: Operation | None = None) -> argparse.ArgumentParser:
        """A subcommand; ``operation``: the management plane's operation it asks for (None: local only)."""
        sub = parent.add_parser(name, help=help, description=help)
        sub.set_defaults(func=func, operation=operation, prints_json=json_out)
        if json_out:
            add_json_option(sub, after_command=True)
        return sub

    vm = commands.add_parser("vm", help="VMs: create, register, power, console, files",
                             description="Create VMs; with --user also register, power on/off, console, browse, download.")
    vm_commands = vm.add_subparsers(dest="vm_command", metavar="COMMAND", required=True)
    create = command(vm_commands, "create", cmd_vm_create, "lay out a new unencrypted VM in PATH", operation=Operation.CREATE_VM)
    create.add_argument("path", help="VM directory to create (must be absent or empty)")
    create.add_argument("--name", help="VM name (default: the directory's name)")
    create.add_argument("--hw-version", type=int, default=14, help="virtual hardware version (default 14)")
    create.add_argument("--firmware", choices=["efi", "bios"], default="efi", help="firmware (default efi)")
    create.add_argument("--memory", type=int, default=2048, help="memory in MiB (default 2048)")
    create.add_argument("--cpus", type=int, default=2, help="virtual CPUs (default 2)")
    create.add_argument("--disk", metavar="SIZE", type=size_argument, help="add a flat virtual disk of SIZE (e.g. 64M, 10G)")

    enc = command(commands, "encrypt", cmd_encrypt, "encrypt a VM's home files (and disks with --disks)", operation=Operation.ENCRYPT)
    enc.add_argument("path", help="the VM's .vmx file or directory")
    enc.add_argument("--disks", action="store_true", help="also encrypt the virtual disks")
    enc.add_argument("--provider", help="key provider name or id (default: the default provider)")

    dec = command(commands, "decrypt", cmd_decrypt, "decrypt every encrypted file of a VM (rolls back an interrupted run)", operation=Operation.DECRYPT)
    dec.add_argument("path", help="the VM's .vmx file or directory")

    rekey = command(commands, "rekey", cmd_rekey, "shallow rekey (new KEK) or, with --deep, new DEK and re-encryption", operation=Operation.REKEY)
    rekey.add_argument("path", help="the VM's .vmx file or directory")
    rekey.add_argument("--deep", action="store_true", help="new DEK: re-encrypt every file")
    rekey.add_argument("--provider", help="move the VM to this key provider")

    desc = command(commands, "describe", cmd_describe, "show key provider, key id, cipher and which files are encrypted", operation=Operation.DESCRIBE_VM)
    desc.add_argument("path", help="the VM's .vmx file or directory")

    vtpm = commands.add_parser("vtpm", help="virtual TPMs of VMs", description="Add a vTPM to a VM, or remove it (--user).")
    vtpm_commands = vtpm.add_subparsers(dest="vtpm_command", metavar="COMMAND", required=True)
    add_vtpm_cmd = command(vtpm_commands, "add", cmd_vtpm_add,
                           "add a vTPM (EFI, hardware version 14+; encrypts the VM; EK certificates from the CA)", operation=Operation.ADD_VTPM)
    add_vtpm_cmd.add_argument("path", help="the VM's .vmx file or directory")

    register_inventory_commands(commands, vm_commands, vtpm_commands, command)
    register_trust_commands(commands, command)
    register_host_commands(commands, command)

    server = command(commands, "server", cmd_server, "run the management service (as root) for --home: the API "
                     "on HOME/run/vmcrypt.sock and, with --listen, over HTTPS", json_out=False)
    server.add_argument("--listen", metavar="HOST:PORT", help="also serve HTTPS here (port 0: any free port)")
    server.add_argument("--socket", metavar="PATH", help="the Unix socket (default HOME/run/vmcrypt.sock)")

    ca = commands.add_parser("ca", help="the certificate authority", description="The CA that certifies vTPM EKs.")
    ca_commands = ca.add_subparsers(dest="ca_command", metavar="COMMAND", required=True)
    command(ca_commands, "show", cmd_ca_show, "show the issuing CA and its chain", operation=Operation.CA_SHOW)
    export = command(ca_commands, "export-root", cmd_ca_export_root, "print (or write) the root certificate", json_out=False, operation=Operation.CA_EXPORT_ROOT)
    export.add_argument("--out", help="write the PEM here instead of stdout")
    export.add_argument("--chain", action="store_true", help="the whole chain, issuing certificate first")
    verify = command(ca_commands, "verify-ek", cmd_ca_verify_ek, "validate a VM's EK certificates against this CA", operation=Operation.CA_VERIFY_EK)
    verify.add_argument("path", help="the VM's .vmx file or directory")
    reissue = command(ca_commands, "reissue-ek", cmd_ca_reissue_ek, "new EK certificates from the current CA (same EKs)", operation=Operation.CA_REISSUE_EK)
    reissue.add_argument("paths", nargs="*", metavar="PATH", help="VMs (.vmx files or directories)")
    reissue.add_argument("--all", action="store_true", help="every VM this management home gave a vTPM")
    imp = command(ca_commands, "import", cmd_ca_import, "use a third-party CA: PEM chain + key, or a PKCS#12 file", operation=Operation.CA_IMPORT)
    imp.add_argument("--cert", required=True, help="PEM chain (issuing certificate first) or PKCS#12 file")
    imp.add_argument("--key", help="PEM private key (omit for PKCS#12)")
    imp.add_argument("--password-file", help="file holding the key or PKCS#12 password")
    csr = command(ca_commands, "csr", cmd_ca_csr, "a CSR for a subordinate CA signed by your CA", json_out=False, operation=Operation.CA_CSR)
    csr.add_argument("--cn", required=True, help="common name of the subordinate CA")
    csr.add_argument("--out", help="write the CSR here instead of stdout")
    signed = command(ca_commands, "import-signed", cmd_ca_import_signed, "import the signed subordinate CA certificate", operation=Operation.CA_IMPORT_SIGNED)
    signed.add_argument("--chain", required=True, help="PEM: the signed certificate, then its chain")
    revoke = command(ca_commands, "revoke", cmd_ca_revoke, "revoke an issued certificate", operation=Operation.CA_REVOKE)
    revoke.add_argument("serial", help="serial number (hex)")
    crl = command(ca_commands, "crl", cmd_ca_crl, "print (or write) the current CRL", json_out=False, operation=Operation.CA_CRL)
    crl.add_argument("--out", help="write the PEM here instead of stdout")

    prov = commands.add_parser("provider", help="key providers", description="Manage key providers.")
    prov_commands = prov.add_subparsers(dest="provider_command", metavar="COMMAND", required=True)
    command(prov_commands, "list", cmd_provider_list, "list key providers (* marks the default)", operation=Operation.LIST_PROVIDERS)
    keys_cmd = command(prov_commands, "keys", cmd_provider_keys, "list the keys of a provider (ids and states, never material)", operation=Operation.LIST_KEYS)
    keys_cmd.add_argument("provider", nargs="?", help="provider name or id (default: the default provider)")
    add = command(prov_commands, "add-native", cmd_provider_add_native, "add another native key provider", operation=Operation.ADD_NATIVE_PROVIDER)
    add.add_argument("name", help="name of the new provider")
    add.add_argument("--default", action="store_true", help="make it the default provider")
    kmip = command(prov_commands, "add-kmip", cmd_provider_add_kmip, "add a KMIP key server cluster (mutual TLS, failover)", operation=Operation.ADD_KMIP_PROVIDER)
    kmip.add_argument("name", help="name of the new provider")
    kmip.add_argument("--server", action="append", required=True, metavar="HOST:PORT",
                      help="a KMIP server; repeat for a cluster, tried in order")
    kmip.add_argument("--ca", required=True, help="PEM CA certificate that verifies the servers")
    kmip.add_argument("--cert", required=True, help="PEM client certificate (EKU clientAuth)")
    kmip.add_argument("--key", required=True, help="PEM client private key")
    kmip.add_argument("--timeout", type=float, default=2.0, help="seconds per KMIP operation (default 2)")
    kmip.add_argument("--cache-seconds", type=float, default=300,
                      help="keep fetched KEKs in memory this long; 0 disables (default 300)")
    kmip.add_argument("--default", action="store_true", help="make it the default provider")
    kmip.add_argument("--id", help="reuse the provider id another management home gave this cluster "
                      "(disaster recovery: VMs name their provider by id)")
    probe = command(prov_commands, "test", cmd_provider_test, "create, fetch and destroy a probe key", operation=Operation.TEST_PROVIDER)
    probe.add_argument("name", help="provider name or id")
    default_cmd = command(prov_commands, "set-default", cmd_provider_set_default, "make a provider the default", operation=Operation.SET_DEFAULT_PROVIDER)
    default_cmd.add_argument("name", help="provider name or id")
    for name, func, what, operation in (
        ("export", cmd_provider_export, "write a passphrase-encrypted backup of a native key store", Operation.EXPORT_KEYS),
        ("import", cmd_provider_import, "merge keys from a native key store backup", Operation.IMPORT_KEYS),
    ):
        sub = command(prov_commands, name, func, what, operation=operation)
        sub.add_argument("file", help="the backup file to write (export) or read (import)")
        sub.add_argument("--provider", help="native provider name or id (default: the default provider)")
        sub.add_argument("--passphrase-file", help=f"file holding the backup passphrase (or set ${BACKUP_PASSPHRASE_ENV})")
    return parser


def _describe_failure(args: argparse.Namespace) -> str:
    parts = [args.command]
    for attr in ("vm_command", "provider_command", "vtpm_command", "ca_command", "inventory_command", "trust_command", "host_command"):
        if getattr(args, attr, None):
            parts.append(getattr(args, attr))
    if getattr(args, "path", None):
        parts.append(str(args.path))
    return " ".join(parts)


def cmd_server(args: argparse.Namespace) -> None:
    """`server`: run the management service for --home until SIGTERM or SIGINT, on the Unix socket (--socket,
    default HOME/run/vmcrypt.sock) and with --listen also over HTTPS. Prints one ready line naming where it serves.
    No --json."""
    serve(resolve_home(args.home), args.listen, Path(args.socket) if args.socket else None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `vmcrypt` command line on ``argv`` (default: the process's arguments) and return its exit status:
    0 done; 1 refused or failed, with one ``error: COMMAND [PATH]: why`` line (and ``note:`` lines) on stderr;
    2 a usage error (argparse exits); 130 interrupted; 141 when the reader of stdout went away."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.json and not args.prints_json:
        parser.error(f"{_describe_failure(args)} has no JSON output: leave out --json")
    check = getattr(args, "check", None)
    problem = check(args) if check is not None else None
    if problem:
        parser.error(problem)
    with quiet_broken_pipe():
        try:
            with connect(args):
                args.func(args)
        except BrokenPipeError:
            raise
        except (VmcryptError, CaError, CommandFailed, OSError, ValueError) as exc:
            message = str(exc)
            if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in message:
                message += f": {exc.filename}"
            print_error(f"{_describe_failure(args)}: {message}")
            for note in getattr(exc, "__notes__", []):
                print(f"note: {one_line(str(note))}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print_error("interrupted")
            return 130
        sys.stdout.flush()  # a closed pipe shows here, inside the guard
    return 0

if __name__ == "__main__":
    sys.exit(main())
