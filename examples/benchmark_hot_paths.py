"""Time the hot paths for a few seconds: in-process TPM commands and disk encryption throughput.

Usage: python examples/benchmark_hot_paths.py [--seconds S] [--disk-mib N]
(works under $VMCRYPT_HOME, else a temp directory). Prints one line per path.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from vmcrypt import KeyManager, ProviderRegistry, VmSpec, create_vm, decrypt_vm, encrypt_vm
from vtpm import ALG, Tpm, TpmClient

from _common import workdir


def rate(seconds: float, call: Callable[[], object]) -> float:
    """Calls per second of ``call`` over about ``seconds``."""
    count, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        call()
        count += 1
    return count / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="time per TPM command (default 0.5)")
    parser.add_argument("--disk-mib", type=int, default=32, help="size of the disk to encrypt (default 32)")
    args = parser.parse_args()

    with TpmClient(Tpm()) as tpm:
        tpm.startup()
        digest = {ALG.SHA256: bytes(32)}
        for name, call in (("GetRandom(32)", lambda: tpm.get_random(32)),
                           ("PCR_Extend(16, SHA-256)", lambda: tpm.pcr_extend(16, digest)),
                           ("PCR_Read(0-7, SHA-256)", lambda: tpm.pcr_read({ALG.SHA256: range(8)}))):
            print(f"{name:26s} {rate(args.seconds, call):10.0f} commands/s")

    base = workdir("bench")
    keys = KeyManager(ProviderRegistry(base / "home"))
    size = args.disk_mib << 20
    vm = create_vm(base / "bench-vm", VmSpec("bench-vm", disk_bytes=size))
    for name, operation in (("encrypt_vm (disks)", lambda: encrypt_vm(vm, keys, include_disks=True)),
                            ("decrypt_vm (disks)", lambda: decrypt_vm(vm, keys))):
        started = time.perf_counter()
        operation()
        elapsed = time.perf_counter() - started
        print(f"{name:26s} {size / elapsed / 1e6:10.1f} MB/s ({args.disk_mib} MiB disk)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
