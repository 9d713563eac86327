"""A backup/restore test: back up an encrypted VM with a vTPM, delete it, restore it, and check it is the same.

The same means: every file byte for byte except the .nvram, which restore writes
back at a higher generation (so an older copy can never be passed off as newer);
its vTPM must still hold the same EK certificate, read through the TPM itself.

Usage: python examples/backup_restore.py [--port PORT] [--data-unix PATH]
(works under $VMCRYPT_HOME, else a temp directory)
Exits 0 when the restored VM matches, 1 (and says what differs) when it does not.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from vmcrypt import UserSession, verify_backup

from _common import add_vtpm_options, encrypted_vm_with_vtpm, powered_on, workdir


RSA_EK_CERT = 0x01C00002  # TCG EK Credential Profile: the RSA 2048 EK certificate's NV index


def fingerprint(directory: Path) -> dict[str, str]:
    """SHA-256 of every file of a VM directory but the .nvram, by name."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir()) if p.is_file() and p.suffix != ".nvram"}


def ek_certificate(session: UserSession, name: str, args: argparse.Namespace) -> bytes:
    """The EK certificate as the VM's powered-on vTPM serves it."""
    with powered_on(session, name, args) as (tpm, _):
        tpm.startup()
        return tpm.nv_read(RSA_EK_CERT, tpm.nv_read_public(RSA_EK_CERT), RSA_EK_CERT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_vtpm_options(parser)
    args = parser.parse_args()
    base = workdir("backup")
    m, admin = encrypted_vm_with_vtpm(base, "vm1", 1 << 20)
    try:
        directory = Path(admin.vm("vm1").vmx_path).parent
        before, certificate = fingerprint(directory), ek_certificate(admin, "vm1", args)

        archive = base / "vm1-backup.tar"
        admin.backup("vm1", archive)
        manifest = verify_backup(archive)  # sizes and digests, no key needed
        admin.delete_vm("vm1")  # the KEK stays at the provider: the backup can still be opened
        restored = admin.restore(archive, "ds1")
        after = fingerprint(Path(restored.vmx_path).parent)

        if after != before:
            changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
            print(f"restored VM differs in: {', '.join(changed)}")
            return 1
        if ek_certificate(admin, "vm1", args) != certificate:
            print("the restored vTPM serves another EK certificate")
            return 1
        print(f"backup of {manifest.vm}: {len(manifest.files)} files, encrypted={manifest.encrypted}; "
              f"restored identical to the original (EK certificate {len(certificate)} bytes) at {restored.vmx_path}")
        return 0
    finally:
        m.close()


if __name__ == "__main__":
    raise SystemExit(main())
