"""Create a VM with a disk, encrypt it (disks included), give it a vTPM, power it on and talk to its TPM.

Usage: python examples/create_encrypt_vm.py   (works under $VMCRYPT_HOME, else a temp directory)
"""

from __future__ import annotations

import secrets

from vmcrypt import Management, VmSpec
from vtpm import TpmClient, free_port_pair

from _common import workdir


def main() -> int:
    base = workdir("create")
    m = Management(base / "home")
    try:
        password = secrets.token_urlsafe(16)
        m.bootstrap("admin", password)
        admin = m.login("admin", password)
        admin.add_datastore("ds1", base / "datastore")
        admin.create_vm("ds1", "vm1", VmSpec("vm1", disk_bytes=4 << 20))
        admin.encrypt("vm1", include_disks=True)
        admin.add_vtpm("vm1")
        port = free_port_pair()
        record = admin.power_on("vm1", port=port)
        try:
            with TpmClient.swtpm_tcp(port) as tpm:
                tpm.startup()
                random = tpm.get_random(16)
        finally:
            admin.power_off("vm1")
        info = admin.describe("vm1")
        print(f"vm1 at {record.vmx_path}: encrypted={info.get('encrypted')}, vTPM on port {port} "
              f"gave {len(random)} random bytes")
        return 0 if info.get("encrypted") and len(random) == 16 else 1
    finally:
        m.close()


if __name__ == "__main__":
    raise SystemExit(main())
