"""The README demo: an encrypted VM on the embedded defaults, and proof of what happened.

Creates a management home and a VM in the directory given with ``--out``
(absent or empty) or else in a new temporary directory, which it keeps and
names at the end; the management home is ``$VMCRYPT_HOME`` when that is set
(it must be new or empty: the demo makes its first administrator), else
``OUT/home``. It never writes into the current directory. It encrypts it with the native key provider, shows what is encrypted and
under which key, checks that no known plaintext survives in the encrypted
files, tampers with a copy to show the integrity check, and decrypts back to
the original bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from vmcrypt import cli, container, vtpm_command, xts
from vmcrypt.errors import IntegrityError
from vmcrypt.cli_common import size_argument
from vmcrypt.home import ENV_HOME, resolve_home
from vmcrypt.inventory import ROOT
from vmcrypt.keys import KeyManager
from vmcrypt.management import Management, PermissionDenied
from vmcrypt.providers.registry import ProviderRegistry
from vmcrypt.trust.demo import trust_story


def _digests(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


class DemoError(Exception):
    """The demo cannot start here; the message says what to change."""


def _fresh(directory: Path, what: str) -> Path:
    """``directory``, which must be absent or empty: the demo never overwrites what someone keeps there."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise DemoError(f"{what} {directory} is not empty: give a new or empty directory")
    return directory


def working_directories(out: str | None, environ: Mapping[str, str]) -> tuple[Path, Path]:
    """(the demo's working directory, its management home) from ``--out`` and ``$VMCRYPT_HOME``."""
    base = _fresh(Path(out).absolute(), "--out") if out else Path(tempfile.mkdtemp(prefix="vmcrypt-demo-"))
    home = environ.get(ENV_HOME)
    return base, _fresh(Path(home).absolute(), f"${ENV_HOME}") if home else base / "home"


def run(out: Path, disk: str, home_dir: Path | None = None, *, port: int | None = None,
        data_unix: Path | None = None) -> int:
    """The whole demo in ``out``; ``port``/``data_unix``: where the vTPM is served (default: a free port)."""
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    home_dir = home_dir or out / "home"
    vm_dir = out / "datastore" / "demo-vm"
    common = ["--home", str(home_dir)]

    _step(f"create VM {vm_dir} (EFI, hardware version 14, {disk} disk)")
    cli.main([*common, "vm", "create", str(vm_dir), "--disk", disk])
    before = _digests(vm_dir)
    markers = {
        "demo-vm.nvram": "PlatformLang".encode("utf-16-le"),
        "vmware.log": b"Log for VMware ESX",
        "namespacedb": b"com.vmware.guestinfo",
        "demo-vm.vmx": b"guestinfo.hostname",
    }

    _step("encrypt with the embedded native key provider (home files and disk)")
    started = time.perf_counter()
    if cli.main([*common, "encrypt", str(vm_dir), "--disks"]) != 0:
        return 1
    print(f"took {time.perf_counter() - started:.2f} s (XTS backend: {xts.BACKEND})")

    _step("describe")
    cli.main([*common, "describe", str(vm_dir)])

    _step("no known plaintext is readable in the encrypted files")
    for name, marker in markers.items():
        found = marker in (vm_dir / name).read_bytes()
        print(f"  {name:16} {marker!r:48} {'FOUND (bad)' if found else 'not found'}")
        if found:
            return 1

    _step("a flipped byte is detected (on a copy)")
    tampered = out / "tampered.nvram"
    shutil.copy(vm_dir / "demo-vm.nvram", tampered)
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    keys = KeyManager(ProviderRegistry(resolve_home(home_dir)))
    try:
        container.read_file(tampered, keys.header_key)
        print("  tampering went unnoticed (bad)")
        return 1
    except IntegrityError as exc:
        print(f"  refused: {exc}")

    _step("key store on disk")
    for path in sorted(home_dir.rglob("*")):
        if path.is_file():
            print(f"  {oct(path.stat().st_mode & 0o777)}  {path.relative_to(home_dir)}")

    _step("decrypt a copy and compare with the original bytes")
    copy_dir = out / "datastore" / "demo-vm-decrypted-copy"
    shutil.copytree(vm_dir, copy_dir)
    cli.main([*common, "decrypt", str(copy_dir)])
    after = _digests(copy_dir)
    same = before == after
    print(f"  {len(after)} files, byte-for-byte identical to before encryption: {same}")

    trusted = _vtpm_step(home_dir, vm_dir, out, port, data_unix)

    _step("result")
    print(f"  encrypted VM:    {vm_dir}")
    print(f"  working directory: {out}")
    print(f"  management home: {home_dir}")
    print(f"  try: .venv/bin/vmcrypt --home {home_dir} describe {vm_dir} --json")
    return 0 if same and trusted else 1


def _vtpm_step(home_dir: Path, vm_dir: Path, out: Path, port: int | None, data_unix: Path | None) -> bool:
    """The management-plane story: roles, a vTPM, power cycles, refusals for No Cryptography Administrator."""
    _step("inventory: an Administrator and a No Cryptography Administrator; the datastore; the VM registered")
    management = Management(home_dir)
    passwords = {"administrator": secrets.token_urlsafe(12), "operator": secrets.token_urlsafe(12)}
    management.bootstrap("administrator", passwords["administrator"])
    admin = management.login("administrator", passwords["administrator"])
    admin.add_user("operator", passwords["operator"])
    admin.grant(ROOT, "operator", "No Cryptography Administrator")
    admin.add_datastore("datastore1", vm_dir.parent)
    admin.register_vm(vm_dir / "demo-vm.vmx", "datastore1")
    operator = management.login("operator", passwords["operator"])
    print("  administrator: Administrator on the root; operator: No Cryptography Administrator on the root")

    _step("add a vTPM (administrator): EKs created in the vTPM, certified by the management CA, certificates in NV")
    admin.add_vtpm("demo-vm")
    common = ["--home", str(home_dir)]
    cli.main([*common, "ca", "show"])
    root_pem = vm_dir.parent.parent / "vmca-root.pem"
    cli.main([*common, "ca", "export-root", "--out", str(root_pem)])

    if shutil.which("tpm2_getrandom") is None:
        print("  tpm2-tools are not installed; skipping the vTPM story (scripts/bootstrap.sh installs them)")
        return True

    _step("power on (operator): the VM's vTPM is served from its encrypted .nvram; tpm2-tools act as the guest")
    record = operator.power_on("demo-vm", port=port, data_unix=data_unix)
    env = {**os.environ, "TPM2TOOLS_TCTI": f"swtpm:host=127.0.0.1,port={record.vtpm_port}"}
    print(f"  vTPM at TPM2TOOLS_TCTI={env['TPM2TOOLS_TCTI']}")
    if data_unix is not None:
        print(f"  and on the Unix data socket {data_unix}")

    def tool(*args: str, stdin: bytes | None = None) -> str:
        done = subprocess.run(args, env=env, input=stdin, capture_output=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {done.stderr.decode().strip()}")
        return done.stdout.decode().strip()

    try:
        tool("tpm2_startup", "-c")
        print(f"  $ tpm2_getrandom --hex 16          -> {tool('tpm2_getrandom', '--hex', '16')}")
        tool("tpm2_pcrextend", "16:sha256=" + hashlib.sha256(b"demo boot event").hexdigest())
        pcr = tool("tpm2_pcrread", "sha256:16").splitlines()[-1].strip()
        print(f"  $ tpm2_pcrextend 16:sha256=...; tpm2_pcrread -> {pcr}")
        tool("tpm2_nvdefine", "0x1500016", "-C", "o", "-s", "21", "-a", "ownerread|ownerwrite")
        tool("tpm2_nvwrite", "0x1500016", "-C", "o", "-i", "-", stdin=b"DEMO-VTPM-NV-SECRET!!")
        print("  $ tpm2_nvdefine 0x1500016 + tpm2_nvwrite 'DEMO-VTPM-NV-SECRET!!'")
        _show_ek_certificate(tool, root_pem)
    finally:
        operator.power_off("demo-vm")
    print("  powered off (operator)")

    nvram = (vm_dir / "demo-vm.nvram").read_bytes()
    print(f"  .nvram is still an encrypted container: {nvram.startswith(container.MAGIC)}; "
          f"NV secret readable in it: {b'DEMO-VTPM-NV-SECRET' in nvram}")

    _step("No Cryptography Administrator: no console, download or vTPM removal on an encrypted VM; "
          "no key export, no CA import")
    before = _digests(vm_dir)
    for attempt in (lambda: operator.open_console("demo-vm"), lambda: operator.download("demo-vm", "demo-vm.nvram"),
                    lambda: operator.remove_vtpm("demo-vm"), lambda: operator.export_keys(b"a passphrase"),
                    lambda: operator.ca_import(root_pem.read_bytes(), None, None)):
        try:
            attempt()
            print("  allowed (bad)")
        except PermissionDenied as exc:
            print(f"  refused: {exc}")
    print(f"  VM files unchanged: {_digests(vm_dir) == before}")

    _step("power on again (administrator) and read the NV index back")
    record = admin.power_on("demo-vm", port=port, data_unix=data_unix)
    env["TPM2TOOLS_TCTI"] = f"swtpm:host=127.0.0.1,port={record.vtpm_port}"
    try:
        tool("tpm2_startup", "-c")
        secret_file = root_pem.with_name("nv.out")
        tool("tpm2_nvread", "0x1500016", "-C", "o", "-o", str(secret_file))
        print(f"  $ tpm2_nvread 0x1500016 -> {secret_file.read_bytes().decode()!r}")
    finally:
        admin.power_off("demo-vm")
    info = subprocess.run(vtpm_command.command_line("info", "--vm", str(vm_dir / "demo-vm.vmx")),
                          env={**env, "VMCRYPT_HOME": str(home_dir)}, capture_output=True, text=True, timeout=60)
    for line in info.stdout.splitlines():
        print(f"  {line}")

    _step("audit log")
    for entry in management.inventory.audit_log():
        print(f"  {entry.user:13} {entry.outcome:7} {entry.action} {entry.entity} {entry.detail}".rstrip())

    _step("Trust Authority: keys only for hosts that prove what they booted")
    try:
        return trust_story(home_dir, out, management, admin, "datastore1")
    finally:
        management.close()


def _show_ek_certificate(tool, root_pem: Path) -> None:
    ek_der = root_pem.with_name("ek-rsa.der")
    tool("tpm2_nvread", "0x01c00002", "-o", str(ek_der))
    ek_pem = root_pem.with_name("ek-rsa.pem")
    tool("openssl", "x509", "-inform", "DER", "-in", str(ek_der), "-out", str(ek_pem))
    san = [line.strip() for line in tool("openssl", "x509", "-in", str(ek_pem), "-noout", "-ext",
                                         "subjectAltName,extendedKeyUsage").splitlines()]
    print(f"  $ tpm2_nvread 0x01c00002 (RSA EK certificate, {ek_der.stat().st_size} bytes DER): {' '.join(san)}")
    print(f"  $ openssl verify -CAfile vmca-root.pem ek-rsa.pem -> "
          f"{tool('openssl', 'verify', '-CAfile', str(root_pem), str(ek_pem)).split(': ')[-1]}")
    ek_pub = root_pem.with_name("ek-rsa.pub")
    tool("tpm2_createek", "-c", str(root_pem.with_name("ek.ctx")), "-G", "rsa", "-u", str(ek_pub), "-f", "pem")
    same = tool("openssl", "x509", "-in", str(ek_pem), "-pubkey", "-noout") == ek_pub.read_text().strip()
    print(f"  $ tpm2_createek -G rsa: same public key as the certificate: {same}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo from the command line (``python -m vmcrypt.demo``): 0 on success, 1 on a failure (one ``error:``
    line), 2 on a usage error."""
    parser = argparse.ArgumentParser(prog="python -m vmcrypt.demo", description=__doc__.splitlines()[0],
                                     epilog=f"Management home: ${ENV_HOME} if set (new or empty), else OUT/home.")
    parser.add_argument("--out", metavar="DIR",
                        help="working directory, absent or empty (default: a new temporary directory, kept)")
    parser.add_argument("--disk", default="256M", type=size_argument,
                        help="size of the demo VM's disk (default 256M)")
    parser.add_argument("--port", type=int, metavar="PORT",
                        help="serve the vTPM's data channel on this TCP port, control on PORT+1 (default: a free pair)")
    parser.add_argument("--data-unix", type=Path, metavar="PATH",
                        help="also serve the vTPM's data channel on this Unix socket")
    args = parser.parse_args(argv)
    try:
        out, home = working_directories(args.out, os.environ)
    except DemoError as exc:
        print(f"error: demo: {exc}", file=sys.stderr)
        return 1
    if args.port is not None and not 1 <= args.port <= 65534:
        parser.error("--port must be between 1 and 65534 (control on PORT+1)")
    return run(out, _size_text(args.disk), home, port=args.port,
               data_unix=None if args.data_unix is None else args.data_unix.absolute())


def _size_text(size: int) -> str:
    """The --disk size as `vm create` takes it."""
    for unit, factor in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


if __name__ == "__main__":
    sys.exit(main())
