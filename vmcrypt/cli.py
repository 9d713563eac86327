"""`vmcrypt`: create, encrypt, decrypt, rekey and describe VMs; manage key providers.

Results go to stdout (``--json`` for scripts), diagnostics to stderr as
``error: <what failed>: <why>``. Exit status: 0 success, 1 refused or
failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from certs.ca import CaError, CertificateAuthority
from durable.atomic import write_atomic
from vmcrypt import xts
from vmcrypt.ca_keys import open_ca
from vmcrypt.cli_common import MASTER_PASSPHRASE_ENV, emit, key_manager
from vmcrypt.cli_inventory import guarded_create, guarded_vm
from vmcrypt.cli_inventory import register as register_inventory_commands
from vmcrypt.errors import VmcryptError
from vmcrypt.keys import KeyManager
from vmcrypt.passphrase import obtain_passphrase
from vmcrypt.progress import FileProgress
from vmcrypt.providers.native import NativeKeyProvider
from vmcrypt.rbac import Operation
from vmcrypt.vm import VmHome, VmSpec, create_vm, parse_size
from vmcrypt.vm_encryption import OperationResult, decrypt_vm, describe_vm, encrypt_vm, rekey_vm
from vmcrypt.vtpm_provision import add_vtpm, reissue_ek_certificates, verify_ek_certificates

BACKUP_PASSPHRASE_ENV = "VMCRYPT_BACKUP_PASSPHRASE"


class CommandFailed(Exception):
    """Raised inside a command to exit 1 with a message."""


def _result_data(result: OperationResult, home: VmHome) -> dict[str, Any]:
    return {
        "operation": result.operation.value,
        "vm": home.name,
        "resumed": result.resumed,
        "changed": [str(f.path.relative_to(home.directory)) for f in result.changed],
        "key_provider_id": result.reference.provider_id if result.reference else None,
        "key_id": result.reference.key_id if result.reference else None,
    }


def _result_text(result: OperationResult, home: VmHome, verb: str) -> str:
    lines = [f"{verb} {home.name}" + (" (resumed an interrupted run)" if result.resumed else "")]
    for vm_file in result.changed:
        lines.append(f"  {vm_file.kind.value:16} {vm_file.path.relative_to(home.directory)}")
    if not result.changed:
        lines.append("  no file needed to change")
    if result.reference:
        lines.append(f"key provider {result.reference.provider_id}, key {result.reference.key_id}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- commands


def cmd_vm_create(args: argparse.Namespace) -> None:
    path = Path(args.path)
    spec = VmSpec(
        name=args.name or path.name,
        hw_version=args.hw_version,
        firmware=args.firmware,
        memory_mb=args.memory,
        cpus=args.cpus,
        disk_bytes=parse_size(args.disk) if args.disk else 0,
    )
    home = guarded_create(args, str(path), lambda: create_vm(path, spec))
    files = sorted(p.name for p in home.directory.iterdir())
    emit(args, {"vm": home.name, "vmx": str(home.vmx_path), "files": files},
         f"created VM {home.name} in {home.directory}\n" + "\n".join(f"  {f}" for f in files))


def _run_vm_operation(args: argparse.Namespace, verb: str, action: Callable[..., OperationResult], **kwargs: Any) -> None:
    home = VmHome(args.path)
    progress = FileProgress()
    try:
        result = guarded_vm(args, OPERATION_OF[action.__name__], args.path,
                            lambda: action(home, key_manager(args), progress=progress, **kwargs))
    finally:
        progress.close()
    emit(args, _result_data(result, home), _result_text(result, home, verb))


OPERATION_OF = {"encrypt_vm": Operation.ENCRYPT, "decrypt_vm": Operation.DECRYPT, "rekey_vm": Operation.REKEY}


def cmd_encrypt(args: argparse.Namespace) -> None:
    _run_vm_operation(args, "encrypted", encrypt_vm, provider=args.provider, include_disks=args.disks)


def cmd_decrypt(args: argparse.Namespace) -> None:
    _run_vm_operation(args, "decrypted", decrypt_vm)


def cmd_rekey(args: argparse.Namespace) -> None:
    verb = "deep-rekeyed (new DEK and KEK)" if args.deep else "shallow-rekeyed (new KEK)"
    _run_vm_operation(args, verb, rekey_vm, deep=args.deep, provider=args.provider)


def cmd_describe(args: argparse.Namespace) -> None:
    info = describe_vm(VmHome(args.path), key_manager(args))
    lines = [f"VM            {info['vm']}", f"configuration {info['vmx']}"]
    if info["encrypted"]:
        provider = info["key_provider"]
        lines += [
            "encrypted     yes",
            f"cipher        {info['cipher']}",
            f"key provider  {provider['name'] or '(not configured here)'} ({provider['id']})",
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
    keys = key_manager(args)
    keys.registry.default()  # the embedded default exists from first use
    default_id = keys.registry.default_id()
    rows = [
        {"id": c.provider_id, "name": c.name, "kind": c.kind, "default": c.provider_id == default_id}
        for c in keys.registry.configs()
    ]
    text = "\n".join(f"{'*' if r['default'] else ' '} {r['name']:16} {r['kind']:8} {r['id']}" for r in rows)
    emit(args, rows, text)


def cmd_provider_keys(args: argparse.Namespace) -> None:
    provider = key_manager(args).provider(args.provider)
    rows = [{"key_id": k.key_id, "created": k.created, "state": k.state.value} for k in provider.list_keys()]
    text = "\n".join(f"{r['key_id']}  {r['created']}  {r['state']}" for r in rows) or "no keys"
    emit(args, rows, text)


def cmd_provider_add_native(args: argparse.Namespace) -> None:
    provider = key_manager(args).registry.add_native(args.name, make_default=args.default)
    emit(args, {"id": provider.provider_id, "name": provider.name, "kind": provider.kind},
         f"added native key provider {provider.name} ({provider.provider_id})")


def cmd_provider_add_kmip(args: argparse.Namespace) -> None:
    provider = key_manager(args).registry.add_kmip(
        args.name, args.server, args.ca, args.cert, args.key,
        timeout=args.timeout, cache_seconds=args.cache_seconds, make_default=args.default, provider_id=args.id)
    servers = ", ".join(args.server)
    emit(args, {"id": provider.provider_id, "name": provider.name, "kind": provider.kind, "servers": args.server},
         f"added KMIP key provider {provider.name} ({provider.provider_id}): {servers}")


def cmd_provider_test(args: argparse.Namespace) -> None:
    """Create, fetch and destroy a probe key: proves the provider works end to end."""
    provider = key_manager(args).registry.get(args.name)
    started = time.perf_counter()
    key_id = provider.create_key()
    try:
        if len(provider.get_key(key_id)) != 32:
            raise CommandFailed(f"key provider {provider.name!r} returned a key of the wrong size")
    finally:
        provider.destroy_key(key_id)
    elapsed_ms = (time.perf_counter() - started) * 1000
    server = getattr(provider, "last_server", None)
    trips = getattr(provider, "round_trips", None)
    data = {"name": provider.name, "kind": provider.kind, "ok": True, "server": server,
            "round_trips": trips, "elapsed_ms": round(elapsed_ms, 1),
            "ms_per_round_trip": round(elapsed_ms / trips, 2) if trips else None}
    where = f" via {server}" if server else ""
    per_trip = f", {data['ms_per_round_trip']} ms per round trip ({trips})" if trips else ""
    emit(args, data, f"key provider {provider.name} works{where}: create, get, destroy in {elapsed_ms:.1f} ms{per_trip}")


def cmd_provider_set_default(args: argparse.Namespace) -> None:
    provider = key_manager(args).registry.set_default(args.name)
    emit(args, {"id": provider.provider_id, "name": provider.name, "kind": provider.kind},
         f"default key provider is now {provider.name} ({provider.provider_id})")


def _native(args: argparse.Namespace) -> NativeKeyProvider:
    provider = key_manager(args).provider(args.provider)
    if not isinstance(provider, NativeKeyProvider):
        raise CommandFailed(f"key provider {provider.name!r} is not a native key provider")
    return provider


def cmd_provider_export(args: argparse.Namespace) -> None:
    provider = _native(args)
    passphrase = obtain_passphrase(args.passphrase_file, BACKUP_PASSPHRASE_ENV, "Backup passphrase: ")
    count = provider.export_backup(args.file, passphrase)
    emit(args, {"file": args.file, "keys": count}, f"exported {count} keys of {provider.name} to {args.file}")


def cmd_provider_import(args: argparse.Namespace) -> None:
    provider = _native(args)
    passphrase = obtain_passphrase(args.passphrase_file, BACKUP_PASSPHRASE_ENV, "Backup passphrase: ")
    count = provider.import_backup(args.file, passphrase)
    emit(args, {"file": args.file, "added": count}, f"imported {count} new keys into {provider.name}")


def _ca(args: argparse.Namespace) -> tuple[CertificateAuthority, KeyManager]:
    keys = key_manager(args)
    return open_ca(keys.registry.home, keys), keys


def _ek_rows(eks: list[Any]) -> list[dict[str, Any]]:
    return [{"ek": e.kind.value, "nv_index": f"0x{e.nv_index:08x}", "serial": f"{e.certificate.serial_number:x}",
             "issuer": e.certificate.issuer.rfc4514_string()} for e in eks]


def cmd_vtpm_add(args: argparse.Namespace) -> None:
    ca, keys = _ca(args)
    vm = VmHome(args.path)
    rows = _ek_rows(guarded_vm(args, Operation.ADD_VTPM, args.path, lambda: add_vtpm(vm, keys, ca)))
    emit(args, {"vm": vm.name, "eks": rows}, f"added a vTPM to {vm.name} (VM encrypted)\n"
         + "\n".join(f"  EK {r['ek']:9} certificate in NV {r['nv_index']} (serial {r['serial']})" for r in rows))


def cmd_ca_show(args: argparse.Namespace) -> None:
    ca, _ = _ca(args)
    info = ca.describe()
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
    ca, _ = _ca(args)
    certs = ca.chain() if args.chain else [ca.root()]
    _write_or_print(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs), args.out)


def cmd_ca_verify_ek(args: argparse.Namespace) -> None:
    ca, keys = _ca(args)
    chain = ca.chain()
    vm = VmHome(args.path)
    rows = verify_ek_certificates(vm, keys, [chain[-1]], chain[:-1], [ca.crl()])
    text = "\n".join(f"{r['ek']:9} {r['nv_index']}  {'OK' if r['valid'] else 'INVALID: ' + r['reason']}" for r in rows)
    emit(args, {"vm": vm.name, "certificates": rows}, text)
    if not all(r["valid"] for r in rows):
        raise CommandFailed("an EK certificate did not validate against the CA")


def cmd_ca_reissue_ek(args: argparse.Namespace) -> None:
    ca, keys = _ca(args)
    if bool(args.paths) == bool(args.all):
        raise CommandFailed("name the VMs or give --all (not both)")
    paths = args.paths or ca.certified_vms()
    rows: list[dict] = []
    skipped: list[dict] = []
    for path in paths:
        if args.all and not Path(path).exists():
            skipped.append({"vm": path, "reason": "no longer there"})
            continue
        try:
            vm = VmHome(path)
            rows += [{"vm": vm.name, **r} for r in _ek_rows(reissue_ek_certificates(vm, keys, ca))]
        except (VmcryptError, CaError) as exc:
            if not args.all:
                raise
            skipped.append({"vm": path, "reason": str(exc)})
    lines = [f"{r['vm']}: EK {r['ek']} reissued by {r['issuer']} (serial {r['serial']})" for r in rows]
    lines += [f"{s['vm']}: skipped ({s['reason']})" for s in skipped]
    emit(args, {"reissued": rows, "skipped": skipped}, "\n".join(lines) or "no VM holds a certificate from this CA")


def cmd_ca_import(args: argparse.Namespace) -> None:
    ca, _ = _ca(args)
    password = Path(args.password_file).read_bytes().rstrip(b"\r\n") if args.password_file else None
    key = Path(args.key).read_bytes() if args.key else None
    ca.import_files(Path(args.cert).read_bytes(), key, password)
    info = ca.describe()
    emit(args, info, f"the CA is now {info['subject']} (chain: {' <- '.join(info['chain'])})")


def cmd_ca_csr(args: argparse.Namespace) -> None:
    ca, _ = _ca(args)
    _write_or_print(ca.create_csr(args.cn), args.out)


def cmd_ca_import_signed(args: argparse.Namespace) -> None:
    ca, _ = _ca(args)
    ca.import_signed(Path(args.chain).read_bytes())
    info = ca.describe()
    emit(args, info, f"the CA is now {info['subject']} (chain: {' <- '.join(info['chain'])})")


def cmd_ca_revoke(args: argparse.Namespace) -> None:
    ca, _ = _ca(args)
    ca.revoke(int(args.serial, 16))
    emit(args, {"revoked": args.serial}, f"revoked {args.serial}")


def cmd_ca_crl(args: argparse.Namespace) -> None:
    ca, _ = _ca(args)
    _write_or_print(ca.crl().public_bytes(serialization.Encoding.PEM), args.out)


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
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
    parser.add_argument("--user", help="act as this inventory user: privileges checked, outcome audited "
                        "(password: $VMCRYPT_PASSWORD or a prompt)")
    parser.add_argument("--version", action="version", version=f"vmcrypt 0.1.0 (XTS backend: {xts.BACKEND})")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(parent: Any, name: str, func: Callable[[argparse.Namespace], None], help: str, json_out: bool = True) -> argparse.ArgumentParser:
        sub = parent.add_parser(name, help=help, description=help)
        sub.set_defaults(func=func)
        if json_out:
            sub.add_argument("--json", action="store_true", help="print the result as JSON")
        return sub

    vm = commands.add_parser("vm", help="VMs: create, register, power, console, files",
                             description="Create VMs; with --user also register, power on/off, console, browse, download.")
    vm_commands = vm.add_subparsers(dest="vm_command", metavar="COMMAND", required=True)
    create = command(vm_commands, "create", cmd_vm_create, "lay out a new unencrypted VM in PATH")
    create.add_argument("path", help="VM directory to create (must be absent or empty)")
    create.add_argument("--name", help="VM name (default: the directory's name)")
    create.add_argument("--hw-version", type=int, default=14, help="virtual hardware version (default 14)")
    create.add_argument("--firmware", choices=["efi", "bios"], default="efi", help="firmware (default efi)")
    create.add_argument("--memory", type=int, default=2048, help="memory in MiB (default 2048)")
    create.add_argument("--cpus", type=int, default=2, help="virtual CPUs (default 2)")
    create.add_argument("--disk", metavar="SIZE", help="add a flat virtual disk of SIZE (e.g. 64M, 10G)")

    enc = command(commands, "encrypt", cmd_encrypt, "encrypt a VM's home files (and disks with --disks)")
    enc.add_argument("path", help="the VM's .vmx file or directory")
    enc.add_argument("--disks", action="store_true", help="also encrypt the virtual disks")
    enc.add_argument("--provider", help="key provider name or id (default: the default provider)")

    dec = command(commands, "decrypt", cmd_decrypt, "decrypt every encrypted file of a VM (rolls back an interrupted run)")
    dec.add_argument("path", help="the VM's .vmx file or directory")

    rekey = command(commands, "rekey", cmd_rekey, "shallow rekey (new KEK) or, with --deep, new DEK and re-encryption")
    rekey.add_argument("path", help="the VM's .vmx file or directory")
    rekey.add_argument("--deep", action="store_true", help="new DEK: re-encrypt every file")
    rekey.add_argument("--provider", help="move the VM to this key provider")

    desc = command(commands, "describe", cmd_describe, "show key provider, key id, cipher and which files are encrypted")
    desc.add_argument("path", help="the VM's .vmx file or directory")

    vtpm = commands.add_parser("vtpm", help="virtual TPMs of VMs", description="Add a vTPM to a VM, or remove it (--user).")
    vtpm_commands = vtpm.add_subparsers(dest="vtpm_command", metavar="COMMAND", required=True)
    add_vtpm_cmd = command(vtpm_commands, "add", cmd_vtpm_add,
                           "add a vTPM (EFI, hardware version 14+; encrypts the VM; EK certificates from the CA)")
    add_vtpm_cmd.add_argument("path", help="the VM's .vmx file or directory")

    register_inventory_commands(commands, vm_commands, vtpm_commands, command)

    ca = commands.add_parser("ca", help="the certificate authority", description="The CA that certifies vTPM EKs.")
    ca_commands = ca.add_subparsers(dest="ca_command", metavar="COMMAND", required=True)
    command(ca_commands, "show", cmd_ca_show, "show the issuing CA and its chain")
    export = command(ca_commands, "export-root", cmd_ca_export_root, "print (or write) the root certificate", json_out=False)
    export.add_argument("--out", help="write the PEM here instead of stdout")
    export.add_argument("--chain", action="store_true", help="the whole chain, issuing certificate first")
    verify = command(ca_commands, "verify-ek", cmd_ca_verify_ek, "validate a VM's EK certificates against this CA")
    verify.add_argument("path", help="the VM's .vmx file or directory")
    reissue = command(ca_commands, "reissue-ek", cmd_ca_reissue_ek, "new EK certificates from the current CA (same EKs)")
    reissue.add_argument("paths", nargs="*", metavar="PATH", help="VMs (.vmx files or directories)")
    reissue.add_argument("--all", action="store_true", help="every VM this management home gave a vTPM")
    imp = command(ca_commands, "import", cmd_ca_import, "use a third-party CA: PEM chain + key, or a PKCS#12 file")
    imp.add_argument("--cert", required=True, help="PEM chain (issuing certificate first) or PKCS#12 file")
    imp.add_argument("--key", help="PEM private key (omit for PKCS#12)")
    imp.add_argument("--password-file", help="file holding the key or PKCS#12 password")
    csr = command(ca_commands, "csr", cmd_ca_csr, "a CSR for a subordinate CA signed by your CA", json_out=False)
    csr.add_argument("--cn", required=True, help="common name of the subordinate CA")
    csr.add_argument("--out", help="write the CSR here instead of stdout")
    signed = command(ca_commands, "import-signed", cmd_ca_import_signed, "import the signed subordinate CA certificate")
    signed.add_argument("--chain", required=True, help="PEM: the signed certificate, then its chain")
    revoke = command(ca_commands, "revoke", cmd_ca_revoke, "revoke an issued certificate")
    revoke.add_argument("serial", help="serial number (hex)")
    crl = command(ca_commands, "crl", cmd_ca_crl, "print (or write) the current CRL", json_out=False)
    crl.add_argument("--out", help="write the PEM here instead of stdout")

    prov = commands.add_parser("provider", help="key providers", description="Manage key providers.")
    prov_commands = prov.add_subparsers(dest="provider_command", metavar="COMMAND", required=True)
    command(prov_commands, "list", cmd_provider_list, "list key providers (* marks the default)")
    keys_cmd = command(prov_commands, "keys", cmd_provider_keys, "list the keys of a provider (ids and states, never material)")
    keys_cmd.add_argument("provider", nargs="?", help="provider name or id (default: the default provider)")
    add = command(prov_commands, "add-native", cmd_provider_add_native, "add another native key provider")
    add.add_argument("name")
    add.add_argument("--default", action="store_true", help="make it the default provider")
    kmip = command(prov_commands, "add-kmip", cmd_provider_add_kmip, "add a KMIP key server cluster (mutual TLS, failover)")
    kmip.add_argument("name")
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
    probe = command(prov_commands, "test", cmd_provider_test, "create, fetch and destroy a probe key")
    probe.add_argument("name", help="provider name or id")
    default_cmd = command(prov_commands, "set-default", cmd_provider_set_default, "make a provider the default")
    default_cmd.add_argument("name", help="provider name or id")
    for name, func, what in (
        ("export", cmd_provider_export, "write a passphrase-encrypted backup of a native key store"),
        ("import", cmd_provider_import, "merge keys from a native key store backup"),
    ):
        sub = command(prov_commands, name, func, what)
        sub.add_argument("file")
        sub.add_argument("--provider", help="native provider name or id (default: the default provider)")
        sub.add_argument("--passphrase-file", help=f"file holding the backup passphrase (or set ${BACKUP_PASSPHRASE_ENV})")
    return parser


def _describe_failure(args: argparse.Namespace) -> str:
    parts = [args.command]
    for attr in ("vm_command", "provider_command", "vtpm_command", "ca_command", "inventory_command"):
        if getattr(args, attr, None):
            parts.append(getattr(args, attr))
    if getattr(args, "path", None):
        parts.append(str(args.path))
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (VmcryptError, CaError, CommandFailed, OSError, ValueError) as exc:
        message = str(exc)
        if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in message:
            message += f": {exc.filename}"
        print(f"error: {_describe_failure(args)}: {message}", file=sys.stderr)
        for note in getattr(exc, "__notes__", []):
            print(f"note: {note}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
