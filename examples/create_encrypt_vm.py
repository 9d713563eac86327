"""Create a VM with a disk, encrypt it (disks included), give it a vTPM, power it on and talk to its TPM.

Usage: python examples/create_encrypt_vm.py [--port PORT] [--data-unix PATH]
(works under $VMCRYPT_HOME, else a temp directory)
"""

from __future__ import annotations

import argparse

from _common import add_vtpm_options, encrypted_vm_with_vtpm, powered_on, workdir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_vtpm_options(parser)
    args = parser.parse_args()
    m, admin = encrypted_vm_with_vtpm(workdir("create"), "vm1", 4 << 20)
    try:
        with powered_on(admin, "vm1", args) as (tpm, port):
            tpm.startup()
            random = tpm.get_random(16)
        info = admin.describe("vm1")
        where = f"port {port}" + (f" and {args.data_unix}" if args.data_unix else "")
        print(f"vm1 at {admin.vm('vm1').vmx_path}: encrypted={info.get('encrypted')}, vTPM on {where} "
              f"gave {len(random)} random bytes")
        return 0 if info.get("encrypted") and len(random) == 16 else 1
    finally:
        m.close()


if __name__ == "__main__":
    raise SystemExit(main())
